//! What the clients count: deliveries, duplicates, latency (HDR histograms),
//! and the server's RSS and CPU from /proc.

use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;

use crate::payload::{Scanner, Seen, now_us};

/// Command ids of client publishes: this plus the channel index (ids are
/// u32 on the wire; those of connect and subscribe stay far below).
pub const PUBLISH_ID_BASE: u64 = 1 << 30;

/// Counters shared by every client of a run.
pub struct Stats {
    /// Publications of the current step received (each client counts its own).
    pub delivered: AtomicU64,
    /// Publications of the current step received again.
    pub duplicates: AtomicU64,
    /// Publications of an earlier step received after its drain time.
    pub late: AtomicU64,
    /// Connections the server closed during the run.
    pub closed: AtomicU64,
    /// Bytes the slow readers read.
    pub slow_bytes: AtomicU64,
    /// Slow readers that read as far as the server's close (one cut off
    /// may not get there within the run: its backlog is read first).
    pub slow_closed: AtomicU64,
    /// Connections currently open and subscribed.
    pub open: AtomicU64,
    /// Per channel: publications the server accepted (API answer or client
    /// publish acknowledgement).
    pub accepted: Vec<AtomicU64>,
    /// Publishes refused or failed.
    pub refused: AtomicU64,
    /// The first refusal's cause.
    pub first_refusal: Mutex<Option<String>>,
    /// Per channel: the first sequence number of the current step; anything
    /// below it belongs to an earlier step.
    pub step_first: Vec<AtomicU64>,
    /// Publish → delivery latency over the current step, µs.
    step: Mutex<Histogram<u64>>,
    /// The same over the last progress interval.
    recent: Mutex<Histogram<u64>>,
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 10 min at 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("static bounds are valid")
}

impl Stats {
    /// Counters for a run over `channels` channels.
    pub fn new(channels: usize) -> Stats {
        let zeros = || (0..channels).map(|_| AtomicU64::new(0)).collect();
        Stats {
            delivered: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            late: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            slow_bytes: AtomicU64::new(0),
            slow_closed: AtomicU64::new(0),
            open: AtomicU64::new(0),
            accepted: zeros(),
            refused: AtomicU64::new(0),
            first_refusal: Mutex::new(None),
            step_first: zeros(),
            step: Mutex::new(histogram()),
            recent: Mutex::new(histogram()),
        }
    }

    /// Counts a refused or failed publish.
    pub fn refuse(&self, why: impl FnOnce() -> String) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        self.first_refusal.lock().get_or_insert_with(why);
    }

    /// Counts the acknowledgements and refusals among a publishing
    /// client's replies: their ids are [`PUBLISH_ID_BASE`] + channel.
    pub fn count_replies(&self, msg: &[u8]) {
        for line in msg.split(|&b| b == b'\n') {
            let Some(rest) = line.strip_prefix(b"{\"id\":") else {
                continue;
            };
            let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
            let Some(id) = std::str::from_utf8(&rest[..digits])
                .ok()
                .and_then(|d| d.parse::<u64>().ok())
            else {
                continue;
            };
            let Some(slot) = id
                .checked_sub(PUBLISH_ID_BASE)
                .and_then(|c| self.accepted.get(c as usize))
            else {
                continue;
            };
            if memchr::memmem::find(line, b"\"error\"").is_some() {
                self.refuse(|| String::from_utf8_lossy(line).into_owned());
            } else {
                slot.fetch_add(1, Ordering::Relaxed);
            }
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
    /// Distinct publications this client received in all.
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
    /// into `stats`: those of the current step as delivered (with their
    /// latency), earlier ones as late.
    pub fn feed(&mut self, bytes: &[u8], stats: &Stats) {
        let now = now_us();
        let (mut got, mut dup, mut late, mut distinct) = (0, 0, 0, 0);
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
                let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
                if bits.len() <= word {
                    bits.resize(word + 1, 0);
                }
                let again = bits[word] & bit != 0;
                bits[word] |= bit;
                distinct += u64::from(!again);
                let first = stats
                    .step_first
                    .get(channel as usize)
                    .map_or(0, |f| f.load(Ordering::Relaxed));
                if seq < first {
                    late += 1;
                    return;
                }
                got += 1;
                dup += u64::from(again);
                samples.push(now.saturating_sub(sent_us));
            },
        );
        self.received += distinct;
        if late > 0 {
            stats.late.fetch_add(late, Ordering::Relaxed);
        }
        if got == 0 {
            return;
        }
        stats.delivered.fetch_add(got, Ordering::Relaxed);
        if dup > 0 {
            stats.duplicates.fetch_add(dup, Ordering::Relaxed);
        }
        stats.record(&self.samples);
        self.samples.clear();
    }
}
