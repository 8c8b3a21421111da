//! A run's phases: connect, idle, publish steps, connect storm.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{Semaphore, mpsc, watch};

use crate::BenchError;
use crate::client::{self, Ctx, Opened, Spec};
use crate::payload;
use crate::proc;
use crate::report::{Connect, Idle, Report, Slow, Step, StormResult, percentile_ms};
use crate::scenario::{Publish, Scenario, Via, channel_name};
use crate::stats::Stats;
use crate::target::{Position, Publisher};

/// How a run is watched.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The server's pid for RSS and CPU; found by its listening port if absent.
    pub pid: Option<u32>,
    /// Print one updating progress line on stderr.
    pub progress: bool,
}

/// Sockets kept free for the publishers and everything else.
const RESERVED_FDS: usize = 64;

/// Runs `scenario` and reports what it measured.
pub async fn run(mut scenario: Scenario, opts: Options) -> Result<Report, BenchError> {
    scenario.check()?;
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + scenario.max_duration;
    let mut notes = Vec::new();
    let (fd_limit, usable) = proc::raise_fd_limit();
    let usable = usable as usize;
    let asked = scenario.connections;
    if asked + RESERVED_FDS > usable {
        scenario.connections = usable.saturating_sub(RESERVED_FDS).max(1);
        notes.push(format!(
            "asked for {asked} connections; this process may hold {} sockets (open-file hard limit {fd_limit}), so it opened at most {}",
            usable, scenario.connections
        ));
    }
    let pid = opts.pid.or_else(|| proc::find_listener(scenario.addr));
    if pid.is_none() {
        notes.push("server pid unknown (pass --pid): no RSS or CPU figures".into());
    }
    let (sources, per_source) = sources(scenario.connections);
    let ctx = Arc::new(Ctx {
        scenario: scenario.clone(),
        stats: Stats::new(scenario.channel_count()),
        sources,
        per_source,
    });
    let phase = Arc::new(Mutex::new(String::from("connect")));
    let progress = opts
        .progress
        .then(|| tokio::spawn(progress_line(ctx.clone(), phase.clone())));

    // Connect.
    let before = pid.map(proc::sample).unwrap_or_default();
    let publishes = scenario
        .publish
        .as_ref()
        .is_some_and(|p| p.via == Via::Client);
    let mut first_member = vec![None; scenario.channel_count()];
    let specs: Vec<Spec> = (0..scenario.connections)
        .map(|i| {
            let channels = scenario.channels_of(i);
            let mut publisher = false;
            for &c in &channels {
                if let Some(slot) = first_member.get_mut(c as usize)
                    && slot.is_none()
                {
                    *slot = Some(i);
                    publisher = publishes;
                }
            }
            Spec {
                index: i,
                addr: scenario.addr_of(i),
                since: vec![None; channels.len()],
                channels,
                publishes: publisher,
                slow: scenario.is_slow(i),
            }
        })
        .collect();
    let (stop, stopped) = watch::channel(false);
    let (clients, mut connect) = connect_all(
        &ctx,
        specs,
        scenario.connect_concurrency,
        &stopped,
        deadline,
    )
    .await;
    connect.rss_before_kib = before.rss_kib;

    // Idle.
    *phase.lock() = "idle".into();
    let idle_start = pid.map(proc::sample).unwrap_or_default();
    sleep_until_or(scenario.idle, deadline).await;
    let idle_end = pid.map(proc::sample).unwrap_or_default();
    let opened = connect.opened.max(1) as f64;
    let idle = Idle {
        seconds: scenario.idle.as_secs_f64(),
        rss_kib: idle_end.rss_kib,
        kib_per_connection: idle_end.rss_kib.saturating_sub(before.rss_kib) as f64 / opened,
        cpu_percent: (idle_end.cpu_s - idle_start.cpu_s) * 100.0
            / scenario.idle.as_secs_f64().max(0.001),
    };

    // Publish steps.
    let mut subs = vec![0u64; scenario.channel_count()];
    for (i, c) in clients.iter().enumerate() {
        // Slow readers are counted apart: what they miss is not lost.
        if c.is_some() && !scenario.is_slow(i) {
            for ch in scenario.channels_of(i) {
                subs[ch as usize] += 1;
            }
        }
    }
    let mut steps = Vec::new();
    let mut limit = None;
    let mut seqs = vec![0u64; scenario.channel_count()];
    if let Some(p) = &scenario.publish {
        let commands: Vec<Option<mpsc::UnboundedSender<String>>> = first_member
            .iter()
            .map(|m| m.and_then(|i| clients[i].as_ref()?.commands.clone()))
            .collect();
        let publisher = Arc::new(Publisher::new(
            scenario.target,
            &scenario.addrs(),
            scenario.auth.clone(),
        ));
        for &rate in &p.rates {
            if tokio::time::Instant::now() + p.step + p.drain > deadline {
                limit = Some(format!("max_duration reached before {rate}/s"));
                break;
            }
            *phase.lock() = format!("{rate}/s");
            let s = step(&ctx, p, rate, &publisher, &commands, &mut seqs, &subs, pid).await;
            let reasons: Vec<String> = [
                (s.latency.p99 > p.stop_p99_ms)
                    .then(|| format!("p99 {:.1} ms > {} ms", s.latency.p99, p.stop_p99_ms)),
                (s.lost > 0 && p.stop_on_loss).then(|| format!("{} lost", s.lost)),
                (s.publish_errors > 0).then(|| {
                    format!(
                        "{} publishes failed: {}",
                        s.publish_errors,
                        s.first_error.clone().unwrap_or_default()
                    )
                }),
                (s.unsent > 0).then(|| {
                    format!(
                        "the publishers fell behind: {} not sent in time (acknowledgements too slow for {} workers)",
                        s.unsent, p.workers
                    )
                }),
            ]
            .into_iter()
            .flatten()
            .collect();
            steps.push(s);
            if !reasons.is_empty() {
                limit = Some(format!("at {rate}/s: {}", reasons.join(", ")));
                break;
            }
        }
    }

    // Storm: everyone leaves, then comes back at once.
    let closed_during_run = ctx.stats.closed.load(Ordering::Relaxed);
    let slow_clients = (0..scenario.connections)
        .filter(|&i| scenario.is_slow(i) && clients[i].is_some())
        .count();
    let slow = (slow_clients > 0).then(|| Slow {
        clients: slow_clients,
        read_bytes_per_second: scenario.subscribe.slow_read,
        saw_close: ctx.stats.slow_closed.load(Ordering::Relaxed),
        kib_each: ctx.stats.slow_bytes.load(Ordering::Relaxed) as f64
            / 1024.0
            / slow_clients as f64,
    });
    let positions: Vec<Vec<Option<Position>>> = clients
        .iter()
        .map(|c| c.as_ref().map(|c| c.positions.clone()).unwrap_or_default())
        .collect();
    close_all(&stop, clients).await;
    let storm = match &scenario.storm {
        Some(storm) => {
            *phase.lock() = "storm".into();
            let result = run_storm(&ctx, storm, &positions, &mut seqs, deadline).await;
            if let Err(e) = &result {
                notes.push(format!("the storm did not run: {e}"));
            }
            result.ok()
        }
        None => None,
    };
    if let Some(p) = progress {
        p.abort();
        eprintln!();
    }
    Ok(Report {
        scenario: scenario.name.clone(),
        target: scenario.target,
        transport: scenario.transport,
        addr: scenario.addr.to_string(),
        server_pid: pid,
        connections_asked: asked,
        fd_limit,
        connect,
        idle,
        steps,
        limit,
        storm,
        closed_by_server: closed_during_run,
        slow,
        seconds: started.elapsed().as_secs_f64(),
        notes,
    })
}

/// Stops every client and waits for it, at most a few seconds: a client
/// stuck writing to a server that stopped reading is aborted.
async fn close_all(stop: &watch::Sender<bool>, clients: Vec<Option<Opened>>) {
    let _ = stop.send(true);
    let by = tokio::time::Instant::now() + Duration::from_secs(5);
    for c in clients.into_iter().flatten() {
        let mut task = c.task;
        if tokio::time::timeout_at(by, &mut task).await.is_err() {
            task.abort();
        }
    }
}

/// Loopback source addresses when one address's ephemeral ports are not enough.
fn sources(connections: usize) -> (Vec<IpAddr>, usize) {
    let range =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let ports: Vec<usize> = range
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    let per_source = match ports.as_slice() {
        [lo, hi] if hi > lo => (hi - lo).saturating_sub(1000).max(1000),
        _ => 20_000,
    };
    if connections <= per_source {
        return (Vec::new(), per_source);
    }
    let n = connections.div_ceil(per_source).min(250);
    let ips = (0..n)
        .map(|i| IpAddr::from([127, 0, 0, 2 + i as u8]))
        .collect();
    (ips, per_source)
}

async fn sleep_until_or(d: Duration, deadline: tokio::time::Instant) {
    tokio::time::sleep_until((tokio::time::Instant::now() + d).min(deadline)).await;
}

/// Opens every client with at most `concurrency` attempts in flight (0: all
/// at once). Returns the clients by index (None: failed) and the numbers.
async fn connect_all(
    ctx: &Arc<Ctx>,
    specs: Vec<Spec>,
    concurrency: usize,
    stop: &watch::Receiver<bool>,
    deadline: tokio::time::Instant,
) -> (Vec<Option<Opened>>, Connect) {
    let n = specs.len();
    let permits = Arc::new(Semaphore::new(if concurrency == 0 {
        n
    } else {
        concurrency
    }));
    let start = Instant::now();
    let tasks: Vec<_> = specs
        .into_iter()
        .map(|spec| {
            let (ctx, permits, stop) = (ctx.clone(), permits.clone(), stop.clone());
            tokio::spawn(async move {
                let _permit = permits.acquire_owned().await.ok()?;
                let opened = tokio::time::timeout_at(deadline, client::open(ctx, spec, stop)).await;
                Some((start.elapsed(), opened))
            })
        })
        .collect();
    let mut clients = Vec::with_capacity(n);
    let mut times = Vec::with_capacity(n);
    let mut first_error = None;
    for t in tasks {
        match t.await.ok().flatten() {
            Some((at, Ok(Ok(opened)))) => {
                times.push(at);
                clients.push(Some(opened));
            }
            Some((_, Ok(Err(e)))) => {
                first_error.get_or_insert_with(|| e.to_string());
                clients.push(None);
            }
            _ => {
                first_error.get_or_insert_with(|| "timed out".into());
                clients.push(None);
            }
        }
    }
    let secs = times
        .iter()
        .max()
        .copied()
        .unwrap_or_default()
        .as_secs_f64();
    times.sort_unstable();
    let opened = times.len();
    (
        clients,
        Connect {
            opened,
            failed: n - opened,
            first_error,
            seconds: secs,
            per_second: opened as f64 / secs.max(0.001),
            ready_p50_ms: percentile_ms(&times, 0.5),
            ready_p99_ms: percentile_ms(&times, 0.99),
            ready_max_ms: percentile_ms(&times, 1.0),
            rss_before_kib: 0,
        },
    )
}

/// One publishing step at `rate` publications/s.
#[allow(clippy::too_many_arguments)]
async fn step(
    ctx: &Arc<Ctx>,
    p: &Publish,
    rate: u32,
    publisher: &Arc<Publisher>,
    commands: &[Option<mpsc::UnboundedSender<String>>],
    seqs: &mut [u64],
    subs: &[u64],
    pid: Option<u32>,
) -> Step {
    let stats = &ctx.stats;
    let channels = seqs.len();
    // Deliveries of earlier steps that arrive now count as late, not here.
    for (first, seq) in stats.step_first.iter().zip(seqs.iter()) {
        first.store(seq + 1, Ordering::Relaxed);
    }
    stats.reset_latency();
    stats.delivered.store(0, Ordering::Relaxed);
    stats.duplicates.store(0, Ordering::Relaxed);
    let accepted0: Vec<u64> = stats
        .accepted
        .iter()
        .map(|a| a.load(Ordering::Relaxed))
        .collect();
    let refused0 = stats.refused.load(Ordering::Relaxed);
    let server0 = pid.map(proc::sample).unwrap_or_default();
    let me0 = proc::sample(std::process::id());
    // API publishing: concurrent workers, each awaiting its answer. What
    // they have not sent when the step ends is dropped and counted: a
    // publisher that cannot keep up must not stretch the step.
    let unsent = Arc::new(AtomicU64::new(0));
    // A little grace: the last publications fall due at the very end.
    let step_end = tokio::time::Instant::now() + p.step + p.step / 10 + Duration::from_millis(500);
    let mut queues = Vec::new();
    let mut workers = Vec::new();
    if p.via == Via::Api {
        for _ in 0..p.workers {
            let (tx, mut rx) = mpsc::unbounded_channel::<(u32, u64)>();
            let (ctx, publisher, unsent) = (ctx.clone(), publisher.clone(), unsent.clone());
            let size = p.payload;
            queues.push(tx);
            workers.push(tokio::spawn(async move {
                while let Some((c, seq)) = rx.recv().await {
                    if tokio::time::Instant::now() > step_end {
                        unsent.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let data = payload::make(c, seq, payload::now_us(), size);
                    match publisher.publish(c, &data).await {
                        Ok(()) => {
                            ctx.stats.accepted[c as usize].fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => ctx.stats.refuse(|| e.to_string()),
                    }
                }
            }));
        }
    }
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let (mut sent, mut next) = (0u64, 0usize);
    let total = (p.step.as_secs_f64() * f64::from(rate)).round() as u64;
    while sent < total {
        tick.tick().await;
        let due = ((start.elapsed().as_secs_f64() * f64::from(rate)) as u64).min(total);
        while sent < due {
            let c = next;
            next = (next + 1) % channels;
            seqs[c] += 1;
            sent += 1;
            match p.via {
                Via::Api => {
                    let _ = queues[sent as usize % queues.len()].send((c as u32, seqs[c]));
                }
                Via::Client => {
                    let data = payload::make(c as u32, seqs[c], payload::now_us(), p.payload);
                    // The id names the channel, so the publishing client can
                    // count the acknowledgement for it.
                    let id = crate::stats::PUBLISH_ID_BASE + c as u64;
                    let cmd = format!(
                        "{{\"id\":{id},\"op\":\"publish\",\"channel\":\"{}\",\"data\":\"{data}\"}}",
                        channel_name(c as u32)
                    );
                    let queued = commands
                        .get(c)
                        .and_then(Option::as_ref)
                        .is_some_and(|tx| tx.send(cmd).is_ok());
                    if !queued {
                        stats.refuse(|| {
                            format!(
                                "the publishing client of {} is gone",
                                channel_name(c as u32)
                            )
                        });
                    }
                }
            }
        }
    }
    drop(queues);
    let join_by = step_end + Duration::from_secs(15);
    for mut w in workers {
        if tokio::time::timeout_at(join_by, &mut w).await.is_err() {
            w.abort();
        }
    }
    let published_in = start.elapsed();
    let accepted = || -> Vec<u64> {
        stats
            .accepted
            .iter()
            .zip(&accepted0)
            .map(|(a, a0)| a.load(Ordering::Relaxed) - a0)
            .collect()
    };
    let refused = || stats.refused.load(Ordering::Relaxed) - refused0;
    let expected = || -> u64 { accepted().iter().zip(subs).map(|(a, s)| a * s).sum() };
    let answered = || accepted().iter().sum::<u64>() + refused() + unsent.load(Ordering::Relaxed);
    let got = || {
        stats
            .delivered
            .load(Ordering::Relaxed)
            .saturating_sub(stats.duplicates.load(Ordering::Relaxed))
    };
    // Wait for the last answers (client publishes) and deliveries.
    let drain_end = Instant::now() + p.drain;
    let mut last = (got(), Instant::now());
    while (answered() < sent || got() < expected()) && Instant::now() < drain_end {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let g = got();
        if g != last.0 {
            last = (g, Instant::now());
        }
    }
    let expected = expected();
    let wall = if got() >= expected {
        start.elapsed()
    } else {
        last.1 - start
    };
    let server1 = pid.map(proc::sample).unwrap_or_default();
    let me1 = proc::sample(std::process::id());
    let delivered = got();
    let cpu = server1.cpu_s - server0.cpu_s;
    let published: u64 = accepted().iter().sum();
    Step {
        rate,
        published,
        publish_rate: published as f64 / published_in.as_secs_f64(),
        expected,
        delivered,
        lost: expected.saturating_sub(delivered),
        duplicates: stats.duplicates.load(Ordering::Relaxed),
        delivered_per_second: delivered as f64 / wall.as_secs_f64().max(0.001),
        latency: stats.step_latency(),
        server_cpu_seconds: cpu,
        server_us_per_delivery: cpu * 1e6 / delivered.max(1) as f64,
        server_rss_kib: server1.rss_kib,
        bench_cpu_percent: (me1.cpu_s - me0.cpu_s) * 100.0
            / start.elapsed().as_secs_f64().max(0.001),
        publish_errors: refused(),
        unsent: unsent.load(Ordering::Relaxed),
        first_error: stats.first_refusal.lock().clone(),
    }
}

/// Everyone has left; publish what they will miss, then all reconnect at once.
async fn run_storm(
    ctx: &Arc<Ctx>,
    storm: &crate::scenario::Storm,
    positions: &[Vec<Option<Position>>],
    seqs: &mut [u64],
    deadline: tokio::time::Instant,
) -> Result<StormResult, BenchError> {
    let s = &ctx.scenario;
    if storm.recover > 0 {
        let publisher = Publisher::new(s.target, &s.addrs(), s.auth.clone());
        for (c, seq) in seqs.iter_mut().enumerate() {
            for _ in 0..storm.recover {
                *seq += 1;
                let data = payload::make(c as u32, *seq, payload::now_us(), 100);
                tokio::time::timeout_at(deadline, publisher.publish(c as u32, &data))
                    .await
                    .map_err(|_| BenchError::Publish("max_duration reached".into()))??;
            }
        }
    }
    let specs: Vec<Spec> = (0..s.connections)
        .map(|i| {
            let channels = s.channels_of(i);
            let since = if storm.recover > 0 {
                positions.get(i).cloned().unwrap_or_default()
            } else {
                Vec::new()
            };
            Spec {
                index: i,
                addr: s.addr_of(i + usize::from(storm.move_node)),
                since,
                channels,
                publishes: false,
                slow: false,
            }
        })
        .collect();
    let want: u64 = specs
        .iter()
        .filter(|sp| sp.since.iter().any(Option::is_some))
        .map(|sp| sp.channels.len() as u64 * storm.recover)
        .sum();
    let (stop, stopped) = watch::channel(false);
    let storm_deadline = (tokio::time::Instant::now() + storm.timeout).min(deadline);
    let (clients, connect) = connect_all(ctx, specs, 0, &stopped, storm_deadline).await;
    let recovered: u64 = clients.iter().flatten().map(|c| c.received).sum();
    close_all(&stop, clients).await;
    Ok(StormResult {
        connect,
        recover_each: storm.recover,
        recovered,
        recover_expected: want,
    })
}

async fn progress_line(ctx: Arc<Ctx>, phase: Arc<Mutex<String>>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last = 0u64;
    loop {
        tick.tick().await;
        let d = ctx.stats.delivered.load(Ordering::Relaxed);
        let recent = ctx.stats.take_recent();
        eprint!(
            "\r[{}] open {} | {} msg/s | p99 {:.1} ms | closed {}      ",
            phase.lock(),
            ctx.stats.open.load(Ordering::Relaxed),
            d.saturating_sub(last),
            recent.p99,
            ctx.stats.closed.load(Ordering::Relaxed),
        );
        last = d;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_sources_only_past_one_address_ports() {
        let (none, per_source) = sources(1000);
        assert!(none.is_empty());
        let (many, _) = sources(per_source * 3 + 1);
        assert_eq!(many.len(), 4);
        assert!(many.iter().all(|ip| ip.is_loopback()));
    }

    #[tokio::test]
    async fn connects_from_another_loopback_source() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let source = IpAddr::from([127, 0, 0, 3]);
        let (client, accepted) =
            tokio::join!(crate::ws::tcp(addr, Some(source)), listener.accept());
        assert_eq!(client.unwrap().local_addr().unwrap().ip(), source);
        assert_eq!(accepted.unwrap().1.ip(), source);
    }
}
