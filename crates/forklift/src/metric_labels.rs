//! Bounded label values for the metrics this crate records.
//!
//! Job types and queue names come from clients: labelled as they are, a tenant that
//! enqueues jobs of ten thousand made-up types makes ten thousand series, and every
//! scrape slower and larger. The first [`MAX_LABELLED`] distinct (type, queue) pairs, and
//! queues, seen by this process keep their names; the rest are counted under `_other`.
//! A worker's own metrics name the pairs it can run (its registry's types in its queues),
//! fixed when it starts; enqueues have a bound of their own, so made-up types cannot push
//! the worker's metrics into `_other`.

use std::collections::{HashMap, HashSet};
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

/// The `type` and `queue` labels of the enqueue counter.
pub fn enqueue_labels(job_type: &str, queue: &str) -> (String, String) {
    static PAIRS: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    // The unit separator cannot occur in a type or queue name.
    if admit(&PAIRS, &format!("{job_type}\u{1f}{queue}")) {
        (job_type.to_string(), queue.to_string())
    } else {
        (OTHER.to_string(), OTHER.to_string())
    }
}

/// The labels of a worker's own metrics (wait, run time, finished). A worker runs only its
/// registry's types in its configured queues, so the pairs named are fixed when it starts:
/// the first [`MAX_LABELLED`] of them, in order; no lock or allocation per job to decide.
pub(crate) struct RunLabels {
    named: HashMap<String, HashSet<String>>,
}

impl RunLabels {
    pub fn new(types: &[String], queues: &[String]) -> Self {
        let mut named: HashMap<String, HashSet<String>> = HashMap::new();
        let pairs = types
            .iter()
            .flat_map(|t| queues.iter().map(move |q| (t, q)));
        for (t, q) in pairs.take(MAX_LABELLED) {
            named.entry(t.clone()).or_default().insert(q.clone());
        }
        RunLabels { named }
    }

    /// The `type` and `queue` labels of a job's metrics.
    pub fn of(&self, job_type: &str, queue: &str) -> (String, String) {
        if self
            .named
            .get(job_type)
            .is_some_and(|qs| qs.contains(queue))
        {
            (job_type.to_string(), queue.to_string())
        } else {
            (OTHER.to_string(), OTHER.to_string())
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
            assert_eq!(enqueue_labels(&format!("t{i}"), "q").0, format!("t{i}"));
        }
        assert_eq!(
            enqueue_labels("one_too_many", "q"),
            (OTHER.into(), OTHER.into())
        );
        assert_eq!(enqueue_labels("t7", "q"), ("t7".into(), "q".into()));
    }

    #[test]
    fn a_worker_names_the_first_pairs_it_can_run() {
        let types: Vec<String> = (0..60).map(|i| format!("t{i}")).collect();
        let queues = vec!["a".to_string(), "b".to_string()];
        let labels = RunLabels::new(&types, &queues);
        assert_eq!(labels.of("t0", "b"), ("t0".into(), "b".into()));
        assert_eq!(labels.of("t49", "b"), ("t49".into(), "b".into()));
        assert_eq!(labels.of("t50", "a"), (OTHER.into(), OTHER.into()));
        assert_eq!(labels.of("t0", "c"), (OTHER.into(), OTHER.into()));
    }
}
