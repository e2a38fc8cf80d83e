//! Per-minute activity for `/stats`: attempts completed and failed, and histograms of the
//! wait (run_at to start) and of the run time, as workers report them. Both stores keep
//! them in `forklift_minutes`, a few rows per tenant and minute, so `/stats` costs the
//! same with ten million finished jobs kept as with none.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::job::TenantId;
use crate::store::{MinuteCount, RecentStats};

/// What a [`MinuteStat`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Metric {
    /// Attempts that ended `SUCCESS` or `PARTIAL_SUCCESS`.
    Completed,
    /// Attempts that ended `FAILED`.
    Failed,
    /// Attempts started, by their wait from `run_at` (histogram bucket).
    Wait,
    /// Attempts ended, by their run time (histogram bucket).
    Run,
}

impl Metric {
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Completed => "completed",
            Metric::Failed => "failed",
            Metric::Wait => "wait",
            Metric::Run => "run",
        }
    }
}

/// `jobs` more of `metric` for a tenant in a minute (and histogram bucket).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MinuteStat {
    pub tenant: TenantId,
    /// The start of the minute.
    pub minute: DateTime<Utc>,
    pub metric: Metric,
    /// The histogram bucket (see [`bucket_of`]); 0 for the counts.
    pub bucket: i16,
    pub jobs: i64,
}

/// Minutes are kept this long, past any stats window.
pub const MINUTES_KEPT: Duration = Duration::from_secs(2 * 3600);

/// The histogram bucket of a duration: 0 under 1 ms, then b for [2^((b-1)/4), 2^(b/4))
/// ms, four buckets per doubling, so a bucket's middle is within 10 % of any value in it;
/// at most 100 (about 8 hours and more).
pub fn bucket_of(d: Duration) -> i16 {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 1.0 {
        return 0;
    }
    (1.0 + (4.0 * ms.log2()).floor()).min(100.0) as i16
}

/// The middle (geometric) of a bucket, in seconds.
fn bucket_middle(bucket: i16) -> f64 {
    if bucket <= 0 {
        return 0.0005;
    }
    2f64.powf((f64::from(bucket) - 0.5) / 4.0) / 1000.0
}

/// Counts by bucket.
#[derive(Default)]
struct Histogram(BTreeMap<i16, i64>);

impl Histogram {
    fn add(&mut self, bucket: i16, jobs: i64) {
        *self.0.entry(bucket).or_default() += jobs;
    }

    /// The value at quantile `q`, in seconds: the middle of the bucket its rank falls in.
    fn percentile(&self, q: f64) -> Option<f64> {
        let total: i64 = self.0.values().sum();
        if total <= 0 {
            return None;
        }
        let rank = (q * total as f64).ceil().max(1.0) as i64;
        let mut seen = 0;
        for (&bucket, &jobs) in &self.0 {
            seen += jobs;
            if seen >= rank {
                return Some(bucket_middle(bucket));
            }
        }
        self.0.keys().next_back().map(|&b| bucket_middle(b))
    }
}

/// The stats of a window, from its rows (minute, metric, bucket, jobs).
pub(crate) fn recent_from_rows(rows: Vec<(DateTime<Utc>, String, i16, i64)>) -> RecentStats {
    let mut per_minute: BTreeMap<DateTime<Utc>, MinuteCount> = BTreeMap::new();
    let (mut waits, mut runs) = (Histogram::default(), Histogram::default());
    for (minute, metric, bucket, jobs) in rows {
        let empty = MinuteCount {
            minute,
            completed: 0,
            failed: 0,
        };
        match metric.as_str() {
            "completed" => per_minute.entry(minute).or_insert(empty).completed += jobs,
            "failed" => per_minute.entry(minute).or_insert(empty).failed += jobs,
            "wait" => waits.add(bucket, jobs),
            "run" => runs.add(bucket, jobs),
            _ => {}
        }
    }
    RecentStats {
        per_minute: per_minute.into_values().collect(),
        wait_p50: waits.percentile(0.5),
        wait_p95: waits.percentile(0.95),
        run_p50: runs.percentile(0.5),
        run_p95: runs.percentile(0.95),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_their_values_within_ten_percent() {
        for ms in [1.0, 1.7, 10.0, 33.0, 999.0, 60_000.0, 3_600_000.0] {
            let middle = bucket_middle(bucket_of(Duration::from_secs_f64(ms / 1000.0)));
            assert!(
                (middle * 1000.0 / ms - 1.0).abs() < 0.1,
                "{ms} ms -> {middle} s"
            );
        }
        assert_eq!(bucket_of(Duration::from_micros(999)), 0);
        assert_eq!(bucket_of(Duration::from_secs(10 * 86_400)), 100);
    }

    #[test]
    fn percentiles_fall_in_the_bucket_of_their_rank() {
        let mut h = Histogram::default();
        h.add(bucket_of(Duration::from_millis(10)), 90);
        h.add(bucket_of(Duration::from_secs(1)), 10);
        let p50 = h.percentile(0.5).unwrap();
        let p95 = h.percentile(0.95).unwrap();
        assert!((p50 / 0.010 - 1.0).abs() < 0.1, "{p50}");
        assert!((p95 / 1.0 - 1.0).abs() < 0.1, "{p95}");
        assert_eq!(Histogram::default().percentile(0.5), None);
    }
}
