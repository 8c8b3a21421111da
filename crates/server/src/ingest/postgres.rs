//! A PostgreSQL transactional outbox: the backend inserts rows in its own
//! transaction; here, per partition and under a transaction-scoped
//! advisory lock (so that several nodes share the partitions and none
//! publishes a row another holds), rows are read in id order, published,
//! and deleted in the same transaction, only after their publications are
//! acknowledged. A crash before the commit leaves the rows for the next
//! reader, whose publishes carry the same idempotency keys. `LISTEN` wakes
//! the reader at once; `poll_interval` is the safety net.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use super::{Backoff, Ingest, Offered, Record, SourceError};

/// The outbox table and its dead-letter table, created with `create = true`.
fn schema(table: &str, dead: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (
            id bigserial PRIMARY KEY,
            partition integer NOT NULL DEFAULT 0,
            channel text NOT NULL,
            data jsonb NOT NULL,
            idempotency_key text,
            key text,
            priority text,
            created_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX IF NOT EXISTS {table}_partition_id ON {table} (partition, id);
        CREATE TABLE IF NOT EXISTS {dead} (
            id bigint NOT NULL,
            partition integer NOT NULL,
            channel text,
            data text,
            idempotency_key text,
            key text,
            priority text,
            reason text NOT NULL,
            failed_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE OR REPLACE FUNCTION {table}_notify() RETURNS trigger AS $$
        BEGIN PERFORM pg_notify('{table}', ''); RETURN NULL; END $$ LANGUAGE plpgsql;
        CREATE OR REPLACE TRIGGER {table}_notify AFTER INSERT ON {table}
            FOR EACH STATEMENT EXECUTE FUNCTION {table}_notify();"
    )
}

/// The advisory lock class of a table: a stable 32-bit hash of its name.
fn lock_class(table: &str) -> i32 {
    // FNV-1a: stable across builds and nodes.
    let hash = table.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    i32::from_ne_bytes(hash.to_ne_bytes())
}

/// Connects; notifications wake `wake`.
async fn connect(url: &str, wake: Arc<Notify>) -> Result<Client, SourceError> {
    let (client, mut connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(_) = message {
                wake.notify_one();
            }
        }
        // The connection ended: the reader's next query fails and it reconnects.
        wake.notify_one();
    });
    Ok(client)
}

/// Consumes until the connection fails.
pub async fn run(ingest: &Ingest, backoff: &mut Backoff) -> Result<(), SourceError> {
    let c = ingest.config();
    let (table, dead) = (c.stream.as_str(), c.dead_letter());
    let wake = Arc::new(Notify::new());
    let mut client = connect(&c.url, wake.clone()).await?;
    if c.create {
        client.batch_execute(&schema(table, &dead)).await?;
    }
    client.batch_execute(&format!("LISTEN {table}")).await?;
    let select = client
        .prepare(&format!(
            "SELECT id, channel, data::text, idempotency_key, key, priority FROM {table}
             WHERE partition = $1 ORDER BY id LIMIT $2"
        ))
        .await?;
    let to_dead = client
        .prepare(&format!(
            "INSERT INTO {dead} (id, partition, channel, data, idempotency_key, key, priority, reason)
             SELECT id, partition, channel, data::text, idempotency_key, key, priority, $2
             FROM {table} WHERE id = $1"
        ))
        .await?;
    let delete = client
        .prepare(&format!("DELETE FROM {table} WHERE id = ANY($1)"))
        .await?;
    let class = lock_class(table);
    let mut last_lag = Instant::now() - Duration::from_secs(5);
    tracing::info!(consumer = %c.name, table, partitions = c.partitions, "consuming a PostgreSQL outbox");
    ingest.up();
    loop {
        let mut busy = false;
        for partition in 0..c.partitions as i32 {
            let tx = client.transaction().await?;
            let locked: bool = tx
                .query_one(
                    "SELECT pg_try_advisory_xact_lock($1, $2)",
                    &[&class, &partition],
                )
                .await?
                .get(0);
            if !locked {
                continue; // another node has this partition now
            }
            let rows = tx
                .query(&select, &[&partition, &(c.batch_size as i64)])
                .await?;
            let mut done: Vec<i64> = Vec::with_capacity(rows.len());
            for row in &rows {
                // A table of other column types is an error, never a panic.
                let id: i64 = row.try_get(0)?;
                let mut record = Record {
                    id: Some(id.to_string()),
                    ..Record::default()
                };
                for (i, name) in ["channel", "data", "idempotency_key", "key", "priority"]
                    .into_iter()
                    .enumerate()
                {
                    if let Some(v) = row.try_get::<_, Option<String>>(i + 1)? {
                        record.fields.insert(name.to_string(), v);
                    }
                }
                if let Offered::Dead(reason) = ingest.offer(&record).await {
                    tx.execute(&to_dead, &[&id, &reason]).await?;
                }
                done.push(id);
            }
            tx.execute(&delete, &[&done]).await?;
            tx.commit().await?;
            backoff.reset();
            busy |= rows.len() == c.batch_size;
        }
        if last_lag.elapsed() >= Duration::from_secs(5) {
            last_lag = Instant::now();
            let count: i64 = client
                .query_one(&format!("SELECT count(*) FROM {table}"), &[])
                .await?
                .get(0);
            ingest.lag(count);
        }
        if !busy {
            // Until a NOTIFY, or the safety-net poll.
            let _ = tokio::time::timeout(c.poll_interval, wake.notified()).await;
        }
        if client.is_closed() {
            return Err(SourceError::Closed);
        }
    }
}
