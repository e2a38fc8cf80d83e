//! SQLite under `kill -9`: a child process enqueues jobs, printing each id as its enqueue
//! returns (the moment a server answers 202), leases one job, and goes on enqueueing until
//! it is SIGKILLed mid-write. The parent reopens the file: every printed id is there, and
//! once the lease lapses the rescuer puts the leased job back in the queue.
//!
//! The child is this test binary again, running the ignored test `crash_child` with the
//! database path in an environment variable.

use std::collections::HashSet;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use forklift::maintenance::Rescuer;
use forklift::store::FetchParams;
use forklift::{Backoff, Client, JobId, JobStatus, NewJob, SqliteStore, Store};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Names the database file for the child; its absence means "not the child".
const CHILD_ENV: &str = "FORKLIFT_CRASH_CHILD_DB";
/// The child's lease: short, so that the parent need not wait long for it to lapse.
const LEASE_TTL: Duration = Duration::from_secs(1);

#[tokio::test]
async fn sqlite_kill_9_loses_no_accepted_job_and_the_leased_one_is_rescued() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("forklift.db").to_str().unwrap().to_string();
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "crash_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("the child starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut accepted = Vec::new();
    let mut leased = None;
    let mut after_lease = 0;
    let read = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(id) = line.strip_prefix("ENQUEUED ") {
                accepted.push(id.parse::<JobId>().unwrap());
                after_lease += usize::from(leased.is_some());
            } else if let Some(id) = line.strip_prefix("LEASED ") {
                leased = Some(id.parse::<JobId>().unwrap());
            }
            // Enough written after the lease that the child is surely mid-enqueue now.
            if after_lease >= 500 {
                return;
            }
        }
        panic!("the child ended before it was killed");
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("the child enqueues");
    // tokio's kill is SIGKILL on Unix: no destructor, no flush, no WAL checkpoint.
    child.kill().await.unwrap();
    let leased = leased.expect("the child leased a job");

    let store = SqliteStore::connect(&path)
        .await
        .expect("the file reopens after the crash");
    store.migrate().await.unwrap();
    let client = Client::new(Arc::new(store.clone()));
    for id in &accepted {
        let job = client
            .get(*id)
            .await
            .unwrap_or_else(|e| panic!("{id} was accepted and then lost: {e}"));
        let expected = if *id == leased {
            JobStatus::Running
        } else {
            JobStatus::Queued
        };
        assert_eq!(job.status, expected, "{id}");
    }
    let distinct: HashSet<_> = accepted.iter().collect();
    assert_eq!(distinct.len(), accepted.len());
    let on_disk = client
        .list(&forklift::ListParams {
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(!on_disk.jobs.is_empty());

    // The killed worker's lease lapses; the rescuer requeues the job, attempt counted.
    tokio::time::sleep(LEASE_TTL + Duration::from_millis(100)).await;
    let backoff = Backoff {
        base: Duration::from_millis(10),
        cap: Duration::from_millis(10),
        jitter: 0.0,
    };
    let rescued = Rescuer::new(Arc::new(store.clone()), backoff)
        .run_once()
        .await
        .unwrap();
    assert_eq!(
        rescued.iter().map(|r| r.job_id).collect::<Vec<_>>(),
        [leased]
    );
    let job = client.get(leased).await.unwrap();
    assert_eq!((job.status, job.attempt), (JobStatus::Queued, 1));
    assert_eq!(job.errors[0].code, "lease_expired");
    println!(
        "{} accepted jobs survived kill -9; the leased one was rescued",
        accepted.len()
    );
}

/// The child of the test above; does nothing unless started by it.
#[tokio::test]
#[ignore = "the child process of sqlite_kill_9_loses_no_accepted_job_and_the_leased_one_is_rescued"]
async fn crash_child() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let store = SqliteStore::connect(&path).await.unwrap();
    store.migrate().await.unwrap();
    let client = Client::new(Arc::new(store.clone()));
    let job = |i: usize| NewJob::new("noop", json!({ "i": i }));
    for i in 0..100 {
        println!(
            "ENQUEUED {}",
            client.enqueue(job(i)).await.unwrap().job.job_id
        );
    }
    let params = FetchParams {
        queue: "default".into(),
        types: vec!["noop".into()],
        limit: 1,
        worker_id: "doomed".into(),
        lease_ttl: LEASE_TTL,
    };
    let leased = store.job_fetch_available(&params).await.unwrap();
    println!("LEASED {}", leased[0].job.job_id);
    // Singles and batches until killed; bounded in case the parent died first.
    for round in 0..20_000 {
        if round % 2 == 0 {
            println!(
                "ENQUEUED {}",
                client.enqueue(job(round)).await.unwrap().job.job_id
            );
        } else {
            for ins in client.enqueue_many(&vec![job(round); 25]).await.unwrap() {
                println!("ENQUEUED {}", ins.job.job_id);
            }
        }
    }
}
