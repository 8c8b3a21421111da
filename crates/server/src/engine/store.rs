//! Durable history on local disk: SQLite in WAL mode, written by one thread
//! with group commit. The memory engine keeps serving reads; this store makes
//! what it holds survive restarts and crashes.
//!
//! Why SQLite (see docs/benchmarks.md for the numbers): WAL mode with
//! `synchronous=NORMAL` is exactly "survives a process crash, may lose the
//! last commits on power failure", and `FULL` is "synced before the ack";
//! transactions make a batch of publications, their channel positions and
//! their idempotency keys atomic; `quick_check` and a format version detect
//! a damaged or foreign file at start-up.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tidings_protocol::{Cursors, Publication};

use super::{EngineError, now_ms};

/// The on-disk format version this build reads and writes.
const FORMAT: i64 = 1;
/// File name of the store inside the data directory.
pub const FILE_NAME: &str = "history.sqlite";
/// Most publications committed in one transaction.
const MAX_BATCH: usize = 4096;
/// How often expired publications and keys are deleted.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// When a publish is acknowledged, relative to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    /// Acknowledged only after the data is synced to disk (group commit).
    Always,
    /// Acknowledged once written to the OS; synced every `fsync_interval`.
    Interval,
    /// Acknowledged once written to the OS; the OS syncs when it likes.
    Never,
}

/// The store could not be opened or used.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The file is damaged.
    #[error(
        "the history store {path} is damaged ({detail}). Tidings did not touch it. Move it away to keep it for inspection, or start with --reset-history to begin again with empty history (clients will be told to reload)"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What SQLite said.
        detail: String,
    },
    /// Another version of Tidings wrote it.
    #[error(
        "the history store {path} has format {found}; this build reads format {FORMAT}. Run the version that wrote it, or start with --reset-history to begin again with empty history"
    )]
    Incompatible {
        /// The file.
        path: PathBuf,
        /// Its format.
        found: i64,
    },
    /// I/O or SQLite failure.
    #[error("history store {path}: {source}")]
    Sqlite {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: rusqlite::Error,
    },
    /// The data directory could not be created.
    #[error("cannot create the data directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Called once a record is committed (or failed), on the writer thread.
pub type Done = Box<dyn FnOnce(Result<(), EngineError>) + Send>;

/// One publication to persist.
pub struct Record {
    /// Channel name.
    pub channel: String,
    /// The channel's epoch.
    pub epoch: String,
    /// The publication (with its offset).
    pub publication: Arc<Publication>,
    /// When it leaves history (ms since the Unix epoch).
    pub expire_at_ms: u64,
    /// Publications with offsets up to this one fall out of history (size limit).
    pub trim_through: u64,
    /// Idempotency key and when it expires (ms).
    pub key: Option<(String, u64)>,
    /// Completion.
    pub done: Done,
}

/// What the store held at start-up.
pub struct Loaded {
    /// Channels with their position, publications and keys.
    pub channels: Vec<LoadedChannel>,
    /// When each user was last seen (ms since the Unix epoch).
    pub last_seen: std::collections::HashMap<String, u64>,
    /// Members (channel, user, since ms, cursors, the cursors' epoch).
    pub members: Vec<(String, String, u64, Cursors, String)>,
    /// Device keys (user, device, key).
    pub device_keys: Vec<(String, String, String)>,
}

/// A change of the chat layer's state (see [`super::Chat`]).
#[derive(Debug)]
pub enum ChatWrite {
    /// A user became a member.
    Member {
        /// The channel.
        channel: String,
        /// The user.
        user: String,
        /// Since when (ms).
        since_ms: u64,
    },
    /// A user stopped being a member.
    Unmember {
        /// The channel.
        channel: String,
        /// The user.
        user: String,
    },
    /// A member's cursors moved.
    Cursors {
        /// The channel.
        channel: String,
        /// The user.
        user: String,
        /// The cursors now.
        cursors: Cursors,
        /// The epoch of their offsets.
        epoch: String,
    },
    /// A device's key was registered.
    Key {
        /// The user.
        user: String,
        /// The device.
        device: String,
        /// Its key.
        key: String,
    },
}

/// A channel as it was on disk.
pub struct LoadedChannel {
    /// Channel name.
    pub channel: String,
    /// Its epoch.
    pub epoch: String,
    /// Its top offset.
    pub top: u64,
    /// Retained publications, oldest first.
    pub publications: Vec<Publication>,
    /// Live idempotency keys: key, offset, expiry (ms).
    pub keys: Vec<(String, u64, u64)>,
    /// Its latest snapshot in this epoch.
    pub snapshot: Option<Publication>,
}

enum Job {
    Append(Record),
    /// The channel's epoch changed (its history was given up).
    Reset {
        channel: String,
        epoch: String,
        top: u64,
    },
    /// A channel's oldest publications were trimmed (the node's bound).
    Trim {
        channel: String,
        through: u64,
    },
    /// A user was seen.
    LastSeen {
        user: String,
        at_ms: u64,
    },
    Chat(ChatWrite),
}

/// The store: a handle to its writer thread.
pub struct Store {
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

fn sqlite_err(path: &Path) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |source| match &source {
        rusqlite::Error::SqliteFailure(e, msg)
            if matches!(
                e.code,
                rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt
            ) =>
        {
            StoreError::Corrupt {
                path: path.to_path_buf(),
                detail: msg.clone().unwrap_or_else(|| e.to_string()),
            }
        }
        _ => StoreError::Sqlite {
            path: path.to_path_buf(),
            source,
        },
    }
}

/// Deletes the store in `dir` (for `--reset-history`).
pub fn reset(dir: &Path) -> std::io::Result<()> {
    for suffix in ["", "-wal", "-shm"] {
        let p = dir.join(format!("{FILE_NAME}{suffix}"));
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl Store {
    /// Opens (or creates) the store in `dir`, checks it, loads what it holds.
    pub fn open(
        dir: &Path,
        fsync: Fsync,
        fsync_interval: Duration,
    ) -> Result<(Store, Loaded), StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(FILE_NAME);
        let err = sqlite_err(&path);
        let conn = Connection::open(&path).map_err(&err)?;
        let check: String = conn
            .query_row("PRAGMA quick_check(1)", [], |r| r.get(0))
            .map_err(&err)?;
        if check != "ok" {
            return Err(StoreError::Corrupt {
                path: path.clone(),
                detail: check,
            });
        }
        let sync = if fsync == Fsync::Always {
            "FULL"
        } else {
            "NORMAL"
        };
        conn.execute_batch(&format!(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous={sync}; PRAGMA journal_size_limit=67108864;
             CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS channels (channel TEXT PRIMARY KEY, epoch TEXT NOT NULL, top INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS pubs (channel TEXT NOT NULL, offset INTEGER NOT NULL, expire_at INTEGER NOT NULL, body BLOB NOT NULL, PRIMARY KEY (channel, offset)) WITHOUT ROWID;
             CREATE INDEX IF NOT EXISTS pubs_expiry ON pubs (expire_at);
             CREATE TABLE IF NOT EXISTS keys (channel TEXT NOT NULL, key TEXT NOT NULL, offset INTEGER NOT NULL, expire_at INTEGER NOT NULL, PRIMARY KEY (channel, key)) WITHOUT ROWID;
             CREATE INDEX IF NOT EXISTS keys_expiry ON keys (expire_at);
             CREATE TABLE IF NOT EXISTS last_seen (user TEXT PRIMARY KEY, at INTEGER NOT NULL) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS snapshots (channel TEXT PRIMARY KEY, epoch TEXT NOT NULL, body BLOB NOT NULL) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS members (channel TEXT NOT NULL, user TEXT NOT NULL, since INTEGER NOT NULL, delivered INTEGER NOT NULL, read INTEGER NOT NULL, epoch TEXT NOT NULL, PRIMARY KEY (channel, user)) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS device_keys (user TEXT NOT NULL, device TEXT NOT NULL, key TEXT NOT NULL, PRIMARY KEY (user, device)) WITHOUT ROWID;"
        ))
        .map_err(&err)?;
        let format: Option<i64> = conn
            .query_row("SELECT value FROM meta WHERE key = 'format'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(&err)?;
        match format {
            None => {
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('format', ?1)",
                    [FORMAT],
                )
                .map_err(&err)?;
            }
            Some(FORMAT) => {}
            Some(found) => {
                return Err(StoreError::Incompatible {
                    path: path.clone(),
                    found,
                });
            }
        }
        let loaded = load(&conn).map_err(&err)?;
        let wal = path.with_file_name(format!("{FILE_NAME}-wal"));
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("tidings-store".into())
            .spawn(move || writer(conn, rx, fsync, fsync_interval, wal))
            .map_err(|source| StoreError::Dir {
                path: dir.to_path_buf(),
                source,
            })?;
        Ok((
            Store {
                tx: Mutex::new(Some(tx)),
                thread: Mutex::new(Some(thread)),
            },
            loaded,
        ))
    }

    /// Queues a record; its `done` runs on the writer thread after commit.
    /// Fails (handing the record back, its `done` not run) when the store
    /// is closed: the caller holds locks that `done` would take.
    pub fn append(&self, record: Record) -> Result<(), Record> {
        let sent = match &*self.tx.lock() {
            Some(tx) => tx.send(Job::Append(record)).map_err(|e| e.0),
            None => Err(Job::Append(record)),
        };
        match sent {
            Ok(()) => Ok(()),
            Err(Job::Append(record)) => Err(record),
            Err(_) => Ok(()),
        }
    }

    /// Records that a channel starts over with a new epoch and no history.
    pub fn reset_channel(&self, channel: &str, epoch: &str, top: u64) {
        if let Some(tx) = &*self.tx.lock() {
            let _ = tx.send(Job::Reset {
                channel: channel.to_string(),
                epoch: epoch.to_string(),
                top,
            });
        }
    }

    /// Records that `channel` keeps nothing up to offset `through`.
    pub fn trim(&self, channel: &str, through: u64) {
        if let Some(tx) = &*self.tx.lock() {
            let _ = tx.send(Job::Trim {
                channel: channel.to_string(),
                through,
            });
        }
    }

    /// Records when a user was last seen.
    pub fn last_seen(&self, user: &str, at_ms: u64) {
        if let Some(tx) = &*self.tx.lock() {
            let _ = tx.send(Job::LastSeen {
                user: user.to_string(),
                at_ms,
            });
        }
    }

    /// Records a change of the chat layer's state (committed with the
    /// next batch, like last seen).
    pub fn chat(&self, write: ChatWrite) {
        if let Some(tx) = &*self.tx.lock() {
            let _ = tx.send(Job::Chat(write));
        }
    }

    /// Writes what is queued, syncs, and stops the writer.
    pub fn close(&self) {
        self.tx.lock().take();
        if let Some(thread) = self.thread.lock().take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

fn load(conn: &Connection) -> rusqlite::Result<Loaded> {
    let last_seen = conn
        .prepare("SELECT user, at FROM last_seen")?
        .query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
        })?
        .collect::<Result<_, _>>()?;
    let members = conn
        .prepare("SELECT channel, user, since, delivered, read, epoch FROM members")?
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)? as u64,
                Cursors {
                    delivered: r.get::<_, i64>(3)? as u64,
                    read: r.get::<_, i64>(4)? as u64,
                },
                r.get::<_, String>(5)?,
            ))
        })?
        .collect::<Result<_, _>>()?;
    let device_keys = conn
        .prepare("SELECT user, device, key FROM device_keys")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    Ok(Loaded {
        channels: load_channels(conn)?,
        last_seen,
        members,
        device_keys,
    })
}

fn load_channels(conn: &Connection) -> rusqlite::Result<Vec<LoadedChannel>> {
    let now = now_ms() as i64;
    let mut channels: Vec<LoadedChannel> = conn
        .prepare("SELECT channel, epoch, top FROM channels")?
        .query_map([], |r| {
            Ok(LoadedChannel {
                channel: r.get(0)?,
                epoch: r.get(1)?,
                top: r.get::<_, i64>(2)? as u64,
                publications: Vec::new(),
                keys: Vec::new(),
                snapshot: None,
            })
        })?
        .collect::<Result<_, _>>()?;
    let mut snapshot =
        conn.prepare("SELECT body FROM snapshots WHERE channel = ?1 AND epoch = ?2")?;
    let mut pubs = conn
        .prepare("SELECT body FROM pubs WHERE channel = ?1 AND expire_at > ?2 ORDER BY offset")?;
    let mut keys = conn
        .prepare("SELECT key, offset, expire_at FROM keys WHERE channel = ?1 AND expire_at > ?2")?;
    let decode = |body: Vec<u8>| -> rusqlite::Result<Publication> {
        serde_json::from_slice(&body).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Blob, Box::new(e))
        })
    };
    for ch in &mut channels {
        for body in pubs.query_map(params![ch.channel, now], |r| r.get::<_, Vec<u8>>(0))? {
            ch.publications.push(decode(body?)?);
        }
        ch.snapshot = snapshot
            .query_map(params![ch.channel, ch.epoch], |r| r.get::<_, Vec<u8>>(0))?
            .next()
            .transpose()?
            .map(decode)
            .transpose()?;
        for k in keys.query_map(params![ch.channel, now], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)? as u64,
                r.get::<_, i64>(2)? as u64,
            ))
        })? {
            ch.keys.push(k?);
        }
    }
    Ok(channels)
}

fn write_batch(conn: &mut Connection, jobs: &[Job]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT OR REPLACE INTO pubs (channel, offset, expire_at, body) VALUES (?1, ?2, ?3, ?4)",
        )?;
        let mut position = tx.prepare_cached(
            "INSERT INTO channels (channel, epoch, top) VALUES (?1, ?2, ?3)
             ON CONFLICT (channel) DO UPDATE SET epoch = excluded.epoch, top = excluded.top",
        )?;
        let mut trim = tx.prepare_cached("DELETE FROM pubs WHERE channel = ?1 AND offset <= ?2")?;
        let mut key = tx.prepare_cached(
            "INSERT OR REPLACE INTO keys (channel, key, offset, expire_at) VALUES (?1, ?2, ?3, ?4)",
        )?;
        let mut clear = tx.prepare_cached("DELETE FROM pubs WHERE channel = ?1")?;
        let mut snapshot = tx.prepare_cached(
            "INSERT OR REPLACE INTO snapshots (channel, epoch, body) VALUES (?1, ?2, ?3)",
        )?;
        for job in jobs {
            match job {
                Job::Append(r) => {
                    let offset = r.publication.offset.unwrap_or(0) as i64;
                    let body = serde_json::to_vec(&*r.publication).unwrap_or_default();
                    insert.execute(params![r.channel, offset, r.expire_at_ms as i64, body])?;
                    if r.publication.snapshot {
                        snapshot.execute(params![r.channel, r.epoch, body])?;
                    }
                    position.execute(params![r.channel, r.epoch, offset])?;
                    if r.trim_through > 0 {
                        trim.execute(params![r.channel, r.trim_through as i64])?;
                    }
                    if let Some((k, expire)) = &r.key {
                        key.execute(params![r.channel, k, offset, *expire as i64])?;
                    }
                }
                Job::Trim { channel, through } => {
                    trim.execute(params![channel, *through as i64])?;
                }
                Job::LastSeen { user, at_ms } => {
                    tx.execute(
                        "INSERT INTO last_seen (user, at) VALUES (?1, ?2)
                         ON CONFLICT (user) DO UPDATE SET at = max(at, excluded.at)",
                        params![user, *at_ms as i64],
                    )?;
                }
                Job::Chat(write) => write_chat(&tx, write)?,
                Job::Reset {
                    channel,
                    epoch,
                    top,
                } => {
                    // The new epoch starts at `top` with no history and no keys.
                    clear.execute(params![channel])?;
                    tx.execute("DELETE FROM keys WHERE channel = ?1", params![channel])?;
                    tx.execute("DELETE FROM snapshots WHERE channel = ?1", params![channel])?;
                    tx.execute(
                        "INSERT INTO channels (channel, epoch, top) VALUES (?1, ?2, ?3)
                         ON CONFLICT (channel) DO UPDATE SET epoch = excluded.epoch, top = excluded.top",
                        params![channel, epoch, *top as i64],
                    )?;
                }
            }
        }
    }
    tx.commit()
}

fn write_chat(tx: &rusqlite::Transaction, write: &ChatWrite) -> rusqlite::Result<()> {
    match write {
        ChatWrite::Member {
            channel,
            user,
            since_ms,
        } => tx
            .prepare_cached(
                "INSERT OR IGNORE INTO members (channel, user, since, delivered, read, epoch) VALUES (?1, ?2, ?3, 0, 0, '')",
            )?
            .execute(params![channel, user, *since_ms as i64]),
        ChatWrite::Unmember { channel, user } => tx
            .prepare_cached("DELETE FROM members WHERE channel = ?1 AND user = ?2")?
            .execute(params![channel, user]),
        // Within an epoch, writes that land out of order keep the highest.
        ChatWrite::Cursors {
            channel,
            user,
            cursors,
            epoch,
        } => tx
            .prepare_cached(
                "UPDATE members SET
                   delivered = CASE WHEN epoch = ?5 THEN max(delivered, ?3) ELSE ?3 END,
                   read = CASE WHEN epoch = ?5 THEN max(read, ?4) ELSE ?4 END,
                   epoch = ?5
                 WHERE channel = ?1 AND user = ?2",
            )?
            .execute(params![
                channel,
                user,
                cursors.delivered as i64,
                cursors.read as i64,
                epoch
            ]),
        ChatWrite::Key { user, device, key } => tx
            .prepare_cached(
                "INSERT OR REPLACE INTO device_keys (user, device, key) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![user, device, key]),
    }
    .map(drop)
}

fn sweep(conn: &Connection) -> rusqlite::Result<()> {
    let now = now_ms() as i64;
    conn.execute("DELETE FROM pubs WHERE expire_at <= ?1", [now])?;
    conn.execute("DELETE FROM keys WHERE expire_at <= ?1", [now])?;
    Ok(())
}

fn writer(
    mut conn: Connection,
    rx: mpsc::Receiver<Job>,
    fsync: Fsync,
    fsync_interval: Duration,
    wal: PathBuf,
) {
    let mut last_sweep = Instant::now();
    let mut last_sync = Instant::now();
    let mut unsynced = false;
    let mut failed: std::collections::HashSet<(String, String)> = Default::default();
    let tick = match fsync {
        Fsync::Interval => fsync_interval.min(SWEEP_EVERY),
        _ => SWEEP_EVERY,
    };
    loop {
        let first = match rx.recv_timeout(tick) {
            Ok(job) => Some(job),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        if let Some(first) = first {
            let mut jobs = vec![first];
            while jobs.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            // Records of an epoch whose earlier write failed are not written:
            // their channel is starting over (its Reset follows).
            let (doomed, jobs): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|j| {
                matches!(j, Job::Append(r) if failed.contains(&(r.channel.clone(), r.epoch.clone())))
            });
            for job in doomed {
                if let Job::Append(r) = job {
                    (r.done)(Err(EngineError::Backend(
                        "an earlier write of this channel failed".into(),
                    )));
                }
            }
            let result = write_batch(&mut conn, &jobs).map_err(|e| {
                tracing::error!(error = %e, "writing history failed");
                EngineError::Backend(e.to_string())
            });
            if result.is_err() {
                failed.extend(jobs.iter().filter_map(|j| match j {
                    Job::Append(r) => Some((r.channel.clone(), r.epoch.clone())),
                    _ => None,
                }));
            }
            unsynced |= result.is_ok();
            for job in jobs {
                if let Job::Append(r) = job {
                    (r.done)(result.clone());
                }
            }
        }
        if fsync == Fsync::Interval && unsynced && last_sync.elapsed() >= fsync_interval {
            // Committed pages are in the WAL file, written to the OS; sync it.
            if let Err(e) = File::open(&wal).and_then(|f| f.sync_data()) {
                tracing::warn!(error = %e, "syncing the history WAL failed");
            }
            last_sync = Instant::now();
            unsynced = false;
        }
        if last_sweep.elapsed() >= SWEEP_EVERY {
            if let Err(e) = sweep(&conn) {
                tracing::warn!(error = %e, "sweeping expired history failed");
            }
            last_sweep = Instant::now();
        }
    }
    // Clean stop: everything is committed; fold the WAL into the database.
    if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);") {
        tracing::warn!(error = %e, "final checkpoint failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::value::RawValue;
    use std::collections::BTreeMap;

    fn append(
        store: &Store,
        channel: &str,
        epoch: &str,
        offset: u64,
        expire_at_ms: u64,
        size: u64,
    ) {
        let (tx, rx) = std::sync::mpsc::channel();
        let appended = store.append(Record {
            channel: channel.into(),
            epoch: epoch.into(),
            publication: Arc::new(Publication {
                offset: Some(offset),
                data: RawValue::from_string(offset.to_string()).unwrap(),
                info: None,
                tags: None,
                key: None,
                priority: None,
                time: now_ms(),
                snapshot: false,
            }),
            expire_at_ms,
            trim_through: offset.saturating_sub(size),
            key: Some((format!("k{offset}"), now_ms() + 60_000)),
            done: Box::new(move |r| {
                let _ = tx.send(r);
            }),
        });
        assert!(appended.is_ok(), "the store is open");
        rx.recv().unwrap().unwrap();
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Publish into channel i; whether it is already expired.
        Publish(usize, bool),
        /// Close and reopen the store.
        Reopen,
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Retention on disk against a model: after any sequence of appends
        /// (some already past their TTL) and reopens, each channel holds its
        /// newest `size` unexpired publications, its top and its epoch.
        #[test]
        fn retention_matches_the_model(size in 1u64..6, ops in proptest::collection::vec(
            prop_oneof![6 => (0usize..3, proptest::bool::weighted(0.2)).prop_map(|(c, e)| Op::Publish(c, e)), 1 => Just(Op::Reopen)], 1..60)) {
            let dir = tempfile::tempdir().unwrap();
            let open = || Store::open(dir.path(), Fsync::Never, Duration::from_millis(10)).unwrap();
            let (mut store, _) = open();
            // Model: per channel, top and the offsets with their expiry.
            let mut model: BTreeMap<String, (u64, Vec<(u64, bool)>)> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Publish(c, expired) => {
                        let channel = format!("ch{c}");
                        let entry = model.entry(channel.clone()).or_default();
                        entry.0 += 1;
                        let offset = entry.0;
                        entry.1.push((offset, expired));
                        let expire = if expired { now_ms().saturating_sub(1) } else { now_ms() + 600_000 };
                        append(&store, &channel, &format!("e-{channel}"), offset, expire, size);
                    }
                    Op::Reopen => {
                        store.close();
                        store = open().0;
                    }
                }
            }
            store.close();
            let (_store, loaded) = open();
            prop_assert_eq!(loaded.channels.len(), model.len());
            for ch in loaded.channels {
                let (top, pubs) = &model[&ch.channel];
                prop_assert_eq!(ch.top, *top);
                prop_assert_eq!(&ch.epoch, &format!("e-{}", ch.channel));
                let want: Vec<u64> = pubs
                    .iter()
                    .filter(|(o, expired)| *o + size > *top && !expired)
                    .map(|(o, _)| *o)
                    .collect();
                let got: Vec<u64> = ch.publications.iter().filter_map(|p| p.offset).collect();
                prop_assert_eq!(got, want);
                prop_assert_eq!(ch.keys.len(), pubs.len());
            }
        }
    }

    #[test]
    fn refuses_a_damaged_file_and_names_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(FILE_NAME),
            b"this is not a database, just garbage bytes",
        )
        .unwrap();
        let err = Store::open(dir.path(), Fsync::Always, Duration::from_millis(10))
            .err()
            .expect("a damaged file is refused");
        let text = err.to_string();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{text}");
        assert!(
            text.contains(FILE_NAME) && text.contains("--reset-history"),
            "{text}"
        );
        // Nothing was wiped.
        let bytes = std::fs::read(dir.path().join(FILE_NAME)).unwrap();
        assert!(bytes.starts_with(b"this is not a database"));
    }

    #[test]
    fn refuses_another_format() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path(), Fsync::Always, Duration::from_millis(10)).unwrap());
        let conn = Connection::open(dir.path().join(FILE_NAME)).unwrap();
        conn.execute("UPDATE meta SET value = 99 WHERE key = 'format'", [])
            .unwrap();
        drop(conn);
        let err = Store::open(dir.path(), Fsync::Always, Duration::from_millis(10))
            .err()
            .unwrap();
        assert!(
            matches!(err, StoreError::Incompatible { found: 99, .. }),
            "{err}"
        );
    }
}
