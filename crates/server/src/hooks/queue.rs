//! The webhook queue on disk (SQLite, WAL): events stay until the backend
//! has acknowledged them, across restarts and `kill -9`. Bounded: past
//! `max` events the oldest go, and the caller counts them.

use std::path::Path;

use parking_lot::Mutex;
use rusqlite::{Connection, params};

/// An error of the queue's database.
#[derive(Debug, thiserror::Error)]
#[error("webhook queue: {0}")]
pub struct QueueError(#[from] rusqlite::Error);

/// Events waiting for the backend, oldest first.
pub struct Queue {
    db: Mutex<Connection>,
    max: usize,
}

/// One queued event: its place in the queue and its JSON.
pub type Queued = (i64, String);

impl Queue {
    /// Opens (or creates) the queue at `path`, holding at most `max` events.
    pub fn open(path: &Path, max: usize) -> Result<Self, QueueError> {
        let db = Connection::open(path)?;
        // WAL with NORMAL sync: a committed event survives the process
        // being killed (the OS has it), and writes stay cheap.
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "NORMAL")?;
        db.execute(
            "CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL)",
            [],
        )?;
        Ok(Self {
            db: Mutex::new(db),
            max,
        })
    }

    /// Appends `events` in one transaction; returns how many of the oldest
    /// were dropped to stay within the bound.
    pub fn push(&self, events: &[String]) -> Result<u64, QueueError> {
        let mut db = self.db.lock();
        let tx = db.transaction()?;
        {
            let mut insert = tx.prepare_cached("INSERT INTO events (body) VALUES (?1)")?;
            for event in events {
                insert.execute(params![event])?;
            }
        }
        let len: i64 = tx.query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))?;
        let over = (len as u64).saturating_sub(self.max as u64);
        if over > 0 {
            tx.execute(
                "DELETE FROM events WHERE seq IN (SELECT seq FROM events ORDER BY seq LIMIT ?1)",
                params![over as i64],
            )?;
        }
        tx.commit()?;
        Ok(over)
    }

    /// The oldest `n` events.
    pub fn peek(&self, n: usize) -> Result<Vec<Queued>, QueueError> {
        let db = self.db.lock();
        let mut stmt = db.prepare_cached("SELECT seq, body FROM events ORDER BY seq LIMIT ?1")?;
        let rows = stmt.query_map(params![n as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Removes events `first..=last` (delivered, or given up on); returns
    /// how many were still there (the bound may have dropped some).
    pub fn remove(&self, first: i64, last: i64) -> Result<u64, QueueError> {
        let n = self.db.lock().execute(
            "DELETE FROM events WHERE seq BETWEEN ?1 AND ?2",
            params![first, last],
        )?;
        Ok(n as u64)
    }

    /// How many events wait.
    pub fn count(&self) -> Result<u64, QueueError> {
        let n: i64 = self
            .db
            .lock()
            .query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))?;
        Ok(n as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_bound_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.sqlite3");
        let q = Queue::open(&path, 3).unwrap();
        let ev = |i: u32| format!("{{\"i\":{i}}}");
        assert_eq!(q.push(&[ev(1), ev(2)]).unwrap(), 0);
        assert_eq!(q.push(&[ev(3), ev(4)]).unwrap(), 1);
        let got = q.peek(10).unwrap();
        let bodies: Vec<&str> = got.iter().map(|(_, b)| b.as_str()).collect();
        assert_eq!(bodies, [ev(2), ev(3), ev(4)]);
        assert_eq!(q.remove(got[0].0, got[1].0).unwrap(), 2);
        drop(q);
        let q = Queue::open(&path, 3).unwrap();
        assert_eq!(q.peek(10).unwrap().len(), 1);
        assert_eq!(q.peek(10).unwrap()[0].1, ev(4));
        assert_eq!(q.count().unwrap(), 1);
    }
}
