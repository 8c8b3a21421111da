//! Exponential backoff with full jitter.

use std::time::Duration;

use rand::Rng;

/// Reconnect delays: `random(0 ..= min(max, min_backoff * 2^attempt))`.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff between `min` (the first cap) and `max` (the largest delay).
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// The cap for `attempt` (0-based): `min(max, min * 2^attempt)`.
    pub(crate) fn cap(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// The next delay (drawn with `rng`) and its 1-based attempt number.
    pub(crate) fn next_with<R: Rng + ?Sized>(&mut self, rng: &mut R) -> (Duration, u32) {
        let cap = self.cap(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        (jitter(cap, rng), self.attempt)
    }

    /// The next delay, drawn from the thread RNG, and its 1-based attempt number.
    pub(crate) fn next_delay(&mut self) -> (Duration, u32) {
        self.next_with(&mut rand::rng())
    }

    /// Starts over after a successful connect.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A uniformly random duration in `0 ..= cap`.
pub(crate) fn jitter<R: Rng + ?Sized>(cap: Duration, rng: &mut R) -> Duration {
    let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rng.random_range(0..=nanos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn caps_double_up_to_max() {
        let b = Backoff::new(500 * MS, 20_000 * MS);
        let caps: Vec<u64> = (0..9).map(|a| b.cap(a).as_millis() as u64).collect();
        assert_eq!(
            caps,
            [500, 1000, 2000, 4000, 8000, 16000, 20000, 20000, 20000]
        );
        assert_eq!(b.cap(31), 20_000 * MS);
        assert_eq!(b.cap(u32::MAX), 20_000 * MS);
        // max below min is raised to min
        assert_eq!(Backoff::new(500 * MS, 10 * MS).cap(5), 500 * MS);
        assert_eq!(Backoff::new(Duration::ZERO, 10 * MS).cap(5), Duration::ZERO);
    }

    #[test]
    fn delays_stay_within_the_cap_and_are_jittered() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut b = Backoff::new(500 * MS, 20_000 * MS);
        for round in 0..200u32 {
            let (d, attempt) = b.next_with(&mut rng);
            assert_eq!(attempt, round + 1);
            assert!(
                d <= b.cap(round),
                "attempt {attempt}: {d:?} > {:?}",
                b.cap(round)
            );
        }
        // Full jitter: the draws at one cap spread over the whole range.
        let samples: Vec<Duration> = (0..1000).map(|_| jitter(1000 * MS, &mut rng)).collect();
        assert!(samples.iter().all(|d| *d <= 1000 * MS));
        assert!(samples.iter().any(|d| *d < 100 * MS));
        assert!(samples.iter().any(|d| *d > 900 * MS));
        let mean = samples.iter().map(Duration::as_secs_f64).sum::<f64>() / 1000.0;
        assert!((0.4..0.6).contains(&mean), "mean {mean}");
    }

    #[test]
    fn reset_starts_over() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut b = Backoff::new(100 * MS, 10_000 * MS);
        for _ in 0..10 {
            b.next_with(&mut rng);
        }
        b.reset();
        let (d, attempt) = b.next_with(&mut rng);
        assert_eq!(attempt, 1);
        assert!(d <= 100 * MS);
        assert_eq!(jitter(Duration::ZERO, &mut rng), Duration::ZERO);
    }
}
