//! Wake-ups within this process.
//!
//! A store's own writes wake its own subscribers directly. A job enqueued on the caller's
//! connection ([`super::SqliteStore::job_insert_many_in`]) has no store at hand, so every
//! open store registers here under its database file, and such an enqueue wakes the
//! stores of this process that use the same file.

use std::sync::{Arc, Mutex, Weak};

use tokio::sync::broadcast;

use crate::store::{Event, send_jobs_available};

/// The event senders of this process's open stores, by database file.
static OPEN: Mutex<Vec<(String, Weak<broadcast::Sender<Event>>)>> = Mutex::new(Vec::new());

/// Records a store's sender; it is forgotten once the store is dropped.
pub fn register(file: &str, events: &Arc<broadcast::Sender<Event>>) {
    let mut open = OPEN.lock().unwrap();
    open.retain(|(_, sender)| sender.strong_count() > 0);
    open.push((file.to_string(), Arc::downgrade(events)));
}

/// Wakes every store of this process on `file`.
pub fn jobs_available_on<'a>(file: &str, queues: impl IntoIterator<Item = &'a str> + Clone) {
    let senders: Vec<_> = OPEN
        .lock()
        .unwrap()
        .iter()
        .filter(|(f, _)| f == file)
        .filter_map(|(_, s)| s.upgrade())
        .collect();
    for sender in senders {
        send_jobs_available(&sender, queues.clone());
    }
}
