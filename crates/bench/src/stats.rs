//! What the clients count: deliveries, duplicates, latency (HDR histograms),
//! and the server's RSS and CPU from /proc.

use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;

use crate::payload::{Scanner, Seen, now_us};

/// Counters shared by every client of a run.
pub struct Stats {
    /// Publications received (each client counts its own).
    pub delivered: AtomicU64,
    /// Publications received again.
    pub duplicates: AtomicU64,
    /// Connections the server closed during the run.
    pub closed: AtomicU64,
    /// Connections currently open and subscribed.
    pub open: AtomicU64,
    /// Publish → delivery latency over the current step, µs.
    step: Mutex<Histogram<u64>>,
    /// The same over the last progress interval.
    recent: Mutex<Histogram<u64>>,
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 10 min at 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("static bounds are valid")
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            delivered: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            open: AtomicU64::new(0),
            step: Mutex::new(histogram()),
            recent: Mutex::new(histogram()),
        }
    }
}

/// Latency percentiles, milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Latency {
            count: h.len(),
            p50: ms(0.5),
            p90: ms(0.9),
            p99: ms(0.99),
            p999: ms(0.999),
            max: h.max() as f64 / 1000.0,
        }
    }
}

impl Stats {
    /// Starts a new step: latency histograms empty.
    pub fn reset_latency(&self) {
        self.step.lock().reset();
        self.recent.lock().reset();
    }

    /// The current step's latency.
    pub fn step_latency(&self) -> Latency {
        Latency::of(&self.step.lock())
    }

    /// The latency since the last call (for the progress line).
    pub fn take_recent(&self) -> Latency {
        let mut h = self.recent.lock();
        let l = Latency::of(&h);
        h.reset();
        l
    }

    fn record(&self, samples: &[u64]) {
        if samples.is_empty() {
            return;
        }
        for h in [&self.step, &self.recent] {
            let mut h = h.lock();
            for &s in samples {
                h.saturating_record(s.max(1));
            }
        }
    }
}

/// One client's view: which sequence numbers it has seen, per channel. A
/// set rather than a high-water mark: concurrent publishers may reorder a
/// channel's publications (the bench checks loss and duplicates, not order).
pub struct Tracker {
    seen: Vec<(u32, Vec<u64>)>,
    scanner: Scanner,
    samples: Vec<u64>,
    /// Publications this client received in all.
    pub received: u64,
}

impl Tracker {
    /// A client of `channels`.
    pub fn new(channels: &[u32]) -> Tracker {
        Tracker {
            seen: channels.iter().map(|&c| (c, Vec::new())).collect(),
            scanner: Scanner::default(),
            samples: Vec::new(),
            received: 0,
        }
    }

    /// Counts every publication in `bytes` (one read's worth of messages)
    /// into `stats`.
    pub fn feed(&mut self, bytes: &[u8], stats: &Stats) {
        let now = now_us();
        let (mut got, mut dup) = (0, 0);
        let seen = &mut self.seen;
        let samples = &mut self.samples;
        self.scanner.scan(
            bytes,
            |Seen {
                 channel,
                 seq,
                 sent_us,
             }| {
                let Some((_, bits)) = seen.iter_mut().find(|(c, _)| *c == channel) else {
                    return;
                };
                got += 1;
                let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
                if bits.len() <= word {
                    bits.resize(word + 1, 0);
                }
                if bits[word] & bit != 0 {
                    dup += 1;
                }
                bits[word] |= bit;
                samples.push(now.saturating_sub(sent_us));
            },
        );
        if got == 0 {
            return;
        }
        self.received += got;
        stats.delivered.fetch_add(got, Ordering::Relaxed);
        if dup > 0 {
            stats.duplicates.fetch_add(dup, Ordering::Relaxed);
        }
        stats.record(&self.samples);
        self.samples.clear();
    }
}
