//! Bounded label values for the metrics this crate records.
//!
//! Job types and queue names come from clients: labelled as they are, a tenant that
//! enqueues jobs of ten thousand made-up types makes ten thousand series, and every
//! scrape slower and larger. The first [`MAX_LABELLED`] distinct (type, queue) pairs, and
//! queues, seen by this process keep their names; the rest are counted under `_other`.
//! The pairs a worker runs (its registry's types in its queues) are named first, when it
//! starts, and enqueues have a set of their own: made-up types cannot push the worker's
//! own metrics into `_other`.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

/// How many distinct (type, queue) pairs, and queues, are labelled by name per process.
pub const MAX_LABELLED: usize = 100;

/// The label value of everything past [`MAX_LABELLED`].
pub const OTHER: &str = "_other";

fn admit(seen: &'static OnceLock<Mutex<HashSet<String>>>, key: &str) -> bool {
    let mut seen = seen.get_or_init(Mutex::default).lock().unwrap();
    if seen.contains(key) {
        return true;
    }
    if seen.len() < MAX_LABELLED {
        seen.insert(key.to_string());
        return true;
    }
    false
}

static RUN_PAIRS: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
static ENQUEUED_PAIRS: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();

fn pair(
    seen: &'static OnceLock<Mutex<HashSet<String>>>,
    job_type: &str,
    queue: &str,
) -> (String, String) {
    // The unit separator cannot occur in a type or queue name.
    if admit(seen, &format!("{job_type}\u{1f}{queue}")) {
        (job_type.to_string(), queue.to_string())
    } else {
        (OTHER.to_string(), OTHER.to_string())
    }
}

/// The `type` and `queue` labels of a running or finished job's metrics.
pub fn job_labels(job_type: &str, queue: &str) -> (String, String) {
    pair(&RUN_PAIRS, job_type, queue)
}

/// The `type` and `queue` labels of the enqueue counter.
pub fn enqueue_labels(job_type: &str, queue: &str) -> (String, String) {
    pair(&ENQUEUED_PAIRS, job_type, queue)
}

/// Names the pairs a worker runs before any client can take the places.
pub(crate) fn admit_worker(types: &[String], queues: &[String]) {
    for t in types {
        for q in queues {
            job_labels(t, q);
        }
    }
}

/// The `queue` label of a per-queue metric (queue depth).
pub fn queue_label(queue: &str) -> String {
    static QUEUES: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    if admit(&QUEUES, queue) {
        queue.to_string()
    } else {
        OTHER.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_bound_new_pairs_are_other_and_known_ones_keep_their_names() {
        for i in 0..MAX_LABELLED {
            assert_eq!(job_labels(&format!("t{i}"), "q").0, format!("t{i}"));
        }
        assert_eq!(
            job_labels("one_too_many", "q"),
            (OTHER.into(), OTHER.into())
        );
        assert_eq!(job_labels("t7", "q"), ("t7".into(), "q".into()));
    }
}
