//! What a run measured: a table for people, one JSON line for scripts.

use std::fmt::{self, Write as _};
use std::time::Duration;

use serde::Serialize;

use crate::scenario::{Target, Transport};
use crate::stats::Latency;

/// Opening the connections.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Connect {
    /// Clients open and subscribed.
    pub opened: usize,
    /// Clients that failed.
    pub failed: usize,
    /// The first failure's cause.
    pub first_error: Option<String>,
    /// From the first attempt to the last client ready.
    pub seconds: f64,
    /// Clients ready per second.
    pub per_second: f64,
    /// Time from the phase's start until a client was ready: median…
    pub ready_p50_ms: f64,
    /// …99th percentile…
    pub ready_p99_ms: f64,
    /// …and the last.
    pub ready_max_ms: f64,
    /// Server RSS before connecting, KiB.
    pub rss_before_kib: u64,
}

/// The server with every client connected and nothing published.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Idle {
    /// How long it was watched.
    pub seconds: f64,
    /// Server RSS at the end, KiB.
    pub rss_kib: u64,
    /// RSS growth over the connect phase, per open client.
    pub kib_per_connection: f64,
    /// Server CPU while idle, percent of one core.
    pub cpu_percent: f64,
}

/// One publishing step.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Step {
    /// Target publications per second.
    pub rate: u32,
    /// Publications accepted.
    pub published: u64,
    /// Publications accepted per second.
    pub publish_rate: f64,
    /// Deliveries owed: each accepted publication times its channel's subscribers.
    pub expected: u64,
    /// Distinct deliveries received.
    pub delivered: u64,
    /// Deliveries owed but not received within the drain time.
    pub lost: u64,
    /// Deliveries received again or out of order.
    pub duplicates: u64,
    /// Deliveries per second.
    pub delivered_per_second: f64,
    /// Publish → delivery latency.
    pub latency: Latency,
    /// Server CPU over the step.
    pub server_cpu_seconds: f64,
    /// Server CPU per delivery, µs.
    pub server_us_per_delivery: f64,
    /// Server RSS at the end, KiB.
    pub server_rss_kib: u64,
    /// The bench's own CPU, percent of one core (near 100 × its cores: the bench is the limit).
    pub bench_cpu_percent: f64,
    /// Publications the publishers could not send within the step.
    pub unsent: u64,
    /// Publishes refused or failed.
    pub publish_errors: u64,
    /// The first failure.
    pub first_error: Option<String>,
}

/// A connect storm.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StormResult {
    /// Everyone reconnecting at once.
    pub connect: Connect,
    /// Publications missed per channel.
    pub recover_each: u64,
    /// Publications recovered in all.
    pub recovered: u64,
    /// Publications owed in all.
    pub recover_expected: u64,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Server under test.
    pub target: Target,
    /// Transport.
    pub transport: Transport,
    /// Server address.
    pub addr: String,
    /// Server pid, when known.
    pub server_pid: Option<u32>,
    /// Connections the scenario asked for.
    pub connections_asked: usize,
    /// This process's open-file limit.
    pub fd_limit: u64,
    /// Connecting.
    pub connect: Connect,
    /// Idle.
    pub idle: Idle,
    /// Publishing steps.
    pub steps: Vec<Step>,
    /// Why stepping stopped early.
    pub limit: Option<String>,
    /// The storm.
    pub storm: Option<StormResult>,
    /// Connections the server closed before the storm.
    pub closed_by_server: u64,
    /// The slow readers, if any.
    pub slow: Option<Slow>,
    /// Length of the run.
    pub seconds: f64,
    /// Anything the reader must know (caps, missing pid).
    pub notes: Vec<String>,
}

/// What became of the slow readers (`subscribe.slow`).
#[derive(Debug, Clone, Serialize)]
pub struct Slow {
    /// How many there were.
    pub clients: usize,
    /// How fast each read.
    pub read_bytes_per_second: u64,
    /// How many read as far as the server's close.
    pub saw_close: u64,
    /// KiB each read over the run, on average.
    pub kib_each: f64,
}

/// Percentile `q` of sorted durations, in ms.
pub fn percentile_ms(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn connect_line(out: &mut String, what: &str, c: &Connect) -> fmt::Result {
    writeln!(
        out,
        "{what}: {} ready, {} failed in {:.2} s ({:.0}/s); ready after p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms{}",
        c.opened,
        c.failed,
        c.seconds,
        c.per_second,
        c.ready_p50_ms,
        c.ready_p99_ms,
        c.ready_max_ms,
        c.first_error
            .as_ref()
            .map(|e| format!(" (first failure: {e})"))
            .unwrap_or_default()
    )
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        writeln!(
            out,
            "{} -> {:?} over {:?} at {} (server pid {})",
            self.scenario,
            self.target,
            self.transport,
            self.addr,
            self.server_pid.map_or("unknown".into(), |p| p.to_string())
        )?;
        connect_line(&mut out, "connect", &self.connect)?;
        writeln!(
            out,
            "idle: server RSS {:.1} MiB -> {:.1} MiB = {:.2} KiB per connection; CPU {:.1} % of a core over {:.0} s",
            mib(self.connect.rss_before_kib),
            mib(self.idle.rss_kib),
            self.idle.kib_per_connection,
            self.idle.cpu_percent,
            self.idle.seconds
        )?;
        if !self.steps.is_empty() {
            writeln!(
                out,
                "{:>7} {:>9} {:>9} {:>11} {:>8} {:>5} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10} {:>9}",
                "rate/s",
                "pub/s",
                "published",
                "delivered/s",
                "lost",
                "dup",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "p99.9 ms",
                "max ms",
                "server µs",
                "bench %"
            )?;
            for s in &self.steps {
                writeln!(
                    out,
                    "{:>7} {:>9.0} {:>9} {:>11.0} {:>8} {:>5} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>10.2} {:>9.0}",
                    s.rate,
                    s.publish_rate,
                    s.published,
                    s.delivered_per_second,
                    s.lost,
                    s.duplicates,
                    s.latency.p50,
                    s.latency.p90,
                    s.latency.p99,
                    s.latency.p999,
                    s.latency.max,
                    s.server_us_per_delivery,
                    s.bench_cpu_percent
                )?;
            }
            writeln!(
                out,
                "(pub/s = publications accepted per second; server µs = server CPU per delivery; bench % = the bench's CPU, of one core)"
            )?;
        }
        if let Some(l) = &self.limit {
            writeln!(out, "stopped: {l}")?;
        }
        if let Some(s) = &self.storm {
            connect_line(&mut out, "storm (all at once)", &s.connect)?;
            if s.recover_each > 0 {
                writeln!(
                    out,
                    "storm recovery: {} of {} missed publications recovered ({} per channel)",
                    s.recovered, s.recover_expected, s.recover_each
                )?;
            }
        }
        if self.closed_by_server > 0 {
            writeln!(
                out,
                "the server closed {} connections during the run",
                self.closed_by_server
            )?;
        }
        if let Some(s) = &self.slow {
            writeln!(
                out,
                "slow readers: {} at {} B/s (not in the figures above): {} saw the server close, {:.1} KiB read each",
                s.clients, s.read_bytes_per_second, s.saw_close, s.kib_each
            )?;
        }
        for n in &self.notes {
            writeln!(out, "note: {n}")?;
        }
        f.write_str(&out)
    }
}
