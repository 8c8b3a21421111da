//! Redis Streams: a consumer group; each entry is acknowledged (`XACK`)
//! after it is published or dead-lettered (`XADD` to the dead-letter
//! stream, with `reason`). Entries a dead consumer left pending are
//! claimed (`XAUTOCLAIM`) after `claim_after`.

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamReadOptions, StreamReadReply,
};

use super::{Backoff, Ingest, Offered, Record, SourceError};
use crate::config::StartAt;

/// How long one `XREADGROUP` blocks when the stream is quiet.
const BLOCK: Duration = Duration::from_secs(1);

fn record(entry: &StreamId) -> Record {
    let fields = entry
        .map
        .iter()
        .filter_map(|(k, v)| {
            Some((
                k.clone(),
                redis::from_redis_value::<String>(v.clone()).ok()?,
            ))
        })
        .collect();
    Record {
        id: Some(entry.id.clone()),
        fields,
        captures: Vec::new(),
    }
}

/// Consumes until the connection fails.
pub async fn run(ingest: &Ingest, backoff: &mut Backoff) -> Result<(), SourceError> {
    let c = ingest.config();
    let client = redis::Client::open(c.url.as_str())?;
    let mut con = client.get_multiplexed_async_connection().await?;
    // Longer than a blocking read's wait.
    con.set_response_timeout(BLOCK + Duration::from_secs(10));
    let start = match c.start {
        StartAt::Earliest => "0",
        StartAt::Latest => "$",
    };
    let created: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&c.stream)
        .arg(&c.group)
        .arg(start)
        .arg("MKSTREAM")
        .query_async(&mut con)
        .await;
    if let Err(e) = created
        && e.code() != Some("BUSYGROUP")
    {
        return Err(e.into());
    }
    // A stable name: after a restart this node reads its own pending
    // entries first; another node's are claimed once idle long enough.
    let me = ingest.node.info().name;
    let dead = c.dead_letter();
    // Pending entries of our own first (id 0), then new ones (>).
    let mut backlog = true;
    let mut last_claim = Instant::now() - c.claim_after;
    let mut last_lag = Instant::now() - Duration::from_secs(5);
    tracing::info!(consumer = %c.name, stream = %c.stream, group = %c.group, "consuming a Redis stream");
    ingest.up();
    loop {
        let mut entries = Vec::new();
        if last_claim.elapsed() >= c.claim_after / 2 {
            last_claim = Instant::now();
            let min_idle = c.claim_after.as_millis() as usize;
            let opts = StreamAutoClaimOptions::default().count(c.batch_size);
            let claimed: StreamAutoClaimReply = con
                .xautoclaim_options(&c.stream, &c.group, &me, min_idle, "0-0", opts)
                .await?;
            entries.extend(claimed.claimed);
        }
        if entries.is_empty() {
            let opts = StreamReadOptions::default()
                .group(&c.group, &me)
                .count(c.batch_size);
            let (opts, from) = if backlog {
                (opts, "0")
            } else {
                (opts.block(BLOCK.as_millis() as usize), ">")
            };
            let reply: Option<StreamReadReply> =
                con.xread_options(&[&c.stream], &[from], &opts).await?;
            entries = reply
                .into_iter()
                .flat_map(|r| r.keys)
                .flat_map(|k| k.ids)
                .collect();
            if backlog && entries.is_empty() {
                backlog = false;
                continue;
            }
        }
        for entry in &entries {
            let record = record(entry);
            if let Offered::Dead(reason) = ingest.offer(&record).await {
                let mut fields: Vec<(String, String)> = record.fields.into_iter().collect();
                fields.push(("reason".into(), reason));
                fields.push(("id".into(), entry.id.clone()));
                let _: String = con.xadd(&dead, "*", &fields).await?;
            }
        }
        // One acknowledgement for the batch, once all of it is published:
        // a crash before it redelivers entries whose keys publish nothing.
        if !entries.is_empty() {
            let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
            let _: i64 = con.xack(&c.stream, &c.group, &ids).await?;
        }
        backoff.reset();
        if last_lag.elapsed() >= Duration::from_secs(5) {
            last_lag = Instant::now();
            ingest.lag(lag(&mut con, &c.stream, &c.group).await.unwrap_or(0));
        }
    }
}

/// Entries the group has not read yet plus those read but not acknowledged
/// (`XINFO GROUPS`: `lag` + `pending`).
async fn lag(
    con: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    group: &str,
) -> redis::RedisResult<i64> {
    let groups: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(con)
        .await?;
    let mine = groups.into_iter().find(|g| {
        g.get("name")
            .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok())
            .is_some_and(|n| n == group)
    });
    let number = |g: &std::collections::HashMap<String, redis::Value>, k: &str| {
        g.get(k)
            .and_then(|v| redis::from_redis_value::<i64>(v.clone()).ok())
            .unwrap_or(0)
    };
    Ok(mine.map_or(0, |g| number(&g, "lag") + number(&g, "pending")))
}
