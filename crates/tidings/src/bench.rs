//! `tidings bench`: runs a scenario (or the ceiling) and prints the result.

use anyhow::Context;
use tidings_bench::scenario::Target;
use tidings_bench::{Options, Scenario};

use crate::BenchArgs;

pub fn run(runtime: &tokio::runtime::Runtime, args: BenchArgs) -> anyhow::Result<()> {
    if args.scenario.as_os_str() == "ceiling" {
        let sockets = args.connections.unwrap_or(10_000);
        let c = tidings_bench::ceiling::run(sockets, args.rounds, args.batch, 120)
            .context("running the ceiling")?;
        if args.json {
            println!("{}", serde_json::to_string(&c)?);
        } else {
            println!(
                "ceiling: {} sockets × {} frames of {} bytes, {} per write: {:.2} µs CPU and {:.2} µs wall per frame ({:.0} frames/s)",
                c.sockets,
                c.rounds,
                c.frame_bytes,
                c.batch,
                c.cpu_us_per_frame,
                c.wall_us_per_frame,
                c.frames_per_second
            );
        }
        return Ok(());
    }
    let mut scenario = Scenario::load(&args.scenario)?;
    if let Some((first, rest)) = args.addr.split_first() {
        scenario.addr = *first;
        scenario.also = rest.to_vec();
    }
    if let Some(n) = args.connections {
        scenario.connections = n;
    }
    if let Some(p) = scenario.publish.as_mut() {
        if let Some(rates) = args.rates {
            p.rates = rates;
        }
        if let Some(ms) = args.stop_p99_ms {
            p.stop_p99_ms = ms;
        }
    }
    if let Some(t) = args.target {
        scenario.target = match t.as_str() {
            "tidings" => Target::Tidings,
            "pusher" => Target::Pusher,
            "socketio" => Target::Socketio,
            other => anyhow::bail!("unknown target {other:?}: tidings, pusher or socketio"),
        };
    }
    let opts = Options {
        pid: args.pid,
        progress: !args.json,
    };
    let report = runtime
        .block_on(tidings_bench::run(scenario, opts))
        .context("bench run failed")?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{report}");
    }
    Ok(())
}
