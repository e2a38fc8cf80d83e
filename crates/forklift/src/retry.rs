//! Exponential back-off with jitter between failed attempts (pure).

use std::time::Duration;

use rand::Rng;

use crate::new_job::MAX_DELAY;

/// How long a job waits before its next attempt after a retryable failure.
///
/// The delay after failed attempt `n` (1-based) is `base * 2^(n-1)`, capped at `cap`,
/// then moved up or down by a random share of at most `jitter`, so that jobs that
/// failed together (a dependency went down) do not all retry in the same instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The delay after the first failed attempt. Default 1 s.
    pub base: Duration,
    /// The longest delay. Default 1 h.
    pub cap: Duration,
    /// The largest relative change made at random, 0.0–1.0. Default 0.2 (±20 %).
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(3600),
            jitter: 0.2,
        }
    }
}

impl Backoff {
    /// The delay before retrying, without jitter: the middle of the range `delay` draws from.
    /// At most [`MAX_DELAY`], whatever the base and cap.
    pub fn nominal(&self, failed_attempt: i32) -> Duration {
        let exp = failed_attempt.saturating_sub(1).clamp(0, 62) as u32;
        let factor = 2f64.powi(exp as i32);
        let secs = (self.base.as_secs_f64() * factor).min(self.cap.as_secs_f64());
        at_most_max_delay(secs)
    }

    /// The delay before retrying after `failed_attempt`, with jitter.
    pub fn delay(&self, failed_attempt: i32) -> Duration {
        let nominal = self.nominal(failed_attempt).as_secs_f64();
        let jitter = self.jitter.clamp(0.0, 1.0);
        let share = if jitter > 0.0 {
            rand::rng().random_range(-jitter..=jitter)
        } else {
            0.0
        };
        at_most_max_delay(nominal * (1.0 + share))
    }
}

/// Seconds as a duration within 0..=[`MAX_DELAY`] (a float past `Duration`'s range would
/// panic in `Duration::from_secs_f64`).
fn at_most_max_delay(secs: f64) -> Duration {
    if secs.is_nan() || secs <= 0.0 {
        return Duration::ZERO;
    }
    Duration::from_secs_f64(secs.min(MAX_DELAY.as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_one_second() {
        let b = Backoff::default();
        let secs: Vec<u64> = (1..=5).map(|a| b.nominal(a).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16]);
    }

    #[test]
    fn is_capped_at_one_hour() {
        let b = Backoff::default();
        assert_eq!(b.nominal(13), Duration::from_secs(3600));
        assert_eq!(b.nominal(1000), Duration::from_secs(3600));
    }

    #[test]
    fn jitter_stays_within_twenty_percent_and_varies() {
        let b = Backoff::default();
        let draws: Vec<f64> = (0..200).map(|_| b.delay(4).as_secs_f64()).collect();
        assert!(draws.iter().all(|d| (6.4..=9.6).contains(d)), "{draws:?}");
        let distinct = draws
            .iter()
            .map(|d| (d * 1000.0) as u64)
            .collect::<std::collections::HashSet<_>>();
        assert!(distinct.len() > 10, "jitter should spread retries");
    }

    #[test]
    fn no_jitter_gives_the_nominal_delay() {
        let b = Backoff {
            jitter: 0.0,
            ..Backoff::default()
        };
        assert_eq!(b.delay(3), Duration::from_secs(4));
    }

    #[test]
    fn first_attempt_zero_or_negative_is_treated_as_first() {
        let b = Backoff::default();
        assert_eq!(b.nominal(0), Duration::from_secs(1));
        assert_eq!(b.nominal(-3), Duration::from_secs(1));
    }

    #[test]
    fn a_base_or_cap_past_any_calendar_gives_at_most_ten_years() {
        let huge = Backoff {
            base: Duration::MAX,
            cap: Duration::MAX,
            jitter: 1.0,
        };
        for attempt in [1, 2, 63, i32::MAX] {
            assert!(huge.delay(attempt) <= MAX_DELAY);
            assert_eq!(huge.nominal(attempt), MAX_DELAY);
        }
    }
}
