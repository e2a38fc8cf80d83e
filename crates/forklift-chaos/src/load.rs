//! The load generator: enqueues `ledger` jobs through the library (one at a time and in
//! batches) and through the HTTP API, and records what each enqueue was answered.
//! Every job carries its enqueue's sequence number `n` in its payload, so the checker can
//! tell an accepted job from one that exists although its enqueue reported an error.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use forklift::{Client, JobId, NewJob};
use rand::Rng;
use rand::rngs::StdRng;
use serde::Serialize;
use tokio::sync::{Mutex, Semaphore};
use uuid::Uuid;

use crate::ledger::LedgerArgs;

/// How an enqueue went in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Via {
    Library,
    Api,
}

/// What one enqueued job was answered.
#[derive(Debug, Clone, Serialize)]
pub struct Enqueued {
    pub n: i64,
    pub via: Via,
    /// The id answered with success (library `Ok`, HTTP 202); `None` for an error.
    pub job_id: Option<Uuid>,
    pub sent_at: DateTime<Utc>,
    pub latency: Duration,
    /// The HTTP status, for the API.
    pub status: Option<u16>,
}

/// Everything the load generator saw.
#[derive(Default)]
pub struct LoadLog {
    pub enqueued: Mutex<Vec<Enqueued>>,
    /// Jobs a cancel was asked for (they may end `CANCELLED`).
    pub cancel_asked: Mutex<HashSet<Uuid>>,
    next_n: AtomicI64,
}

/// The load generator's handles.
pub struct Load {
    pub client: Client,
    pub http: reqwest::Client,
    pub api: String,
    pub log: Arc<LoadLog>,
    /// Bounds the enqueues in flight: during an outage each waits for its pool timeout.
    pub in_flight: Arc<Semaphore>,
}

/// A `ledger` job with random work: mostly short, a few long (they are the ones a
/// graceful shutdown has to release), some failing their first attempt on purpose.
fn payload(n: i64, rng: &mut StdRng) -> LedgerArgs {
    let long = rng.random_bool(0.05);
    LedgerArgs {
        n,
        steps: if long { 20 } else { rng.random_range(1..=8) },
        step_ms: if long { 300 } else { rng.random_range(20..150) },
        fail_first: rng.random_bool(0.08),
    }
}

impl Load {
    /// Enqueues at `rate` per second until `until`, then waits for the enqueues in flight.
    pub async fn run(&self, rate: f64, api_share: f64, until: Instant, mut rng: StdRng) {
        let mut next = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        while Instant::now() < until {
            tokio::time::sleep_until(next.into()).await;
            // Poisson arrivals: exponential gaps with mean 1/rate.
            let gap = -(1.0 - rng.random::<f64>()).ln() / rate;
            next += Duration::from_secs_f64(gap.min(5.0));
            let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
                continue; // the system is stuck (an outage): shed load rather than queue it
            };
            let batch = if rng.random_bool(0.03) {
                rng.random_range(5..30)
            } else {
                1
            };
            let via = if batch == 1 && rng.random_bool(api_share) {
                Via::Api
            } else {
                Via::Library
            };
            let jobs: Vec<LedgerArgs> = (0..batch)
                .map(|_| payload(self.next_n(), &mut rng))
                .collect();
            let cancel_after = rng
                .random_bool(0.02)
                .then(|| Duration::from_millis(rng.random_range(0..1500)));
            let this = self.clone_handles();
            tasks.spawn(async move {
                let ids = match via {
                    Via::Library => this.enqueue_library(&jobs).await,
                    Via::Api => vec![this.enqueue_api(&jobs[0]).await],
                };
                drop(permit);
                if let (Some(delay), Some(Some(id))) = (cancel_after, ids.first()) {
                    tokio::time::sleep(delay).await;
                    this.log.cancel_asked.lock().await.insert(*id);
                    let _ = this.client.cancel(JobId(*id)).await;
                }
            });
            while tasks.try_join_next().is_some() {}
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
    }

    /// The next sequence number.
    pub fn next_n(&self) -> i64 {
        self.log.next_n.fetch_add(1, Ordering::Relaxed)
    }

    fn clone_handles(&self) -> Load {
        Load {
            client: self.client.clone(),
            http: self.http.clone(),
            api: self.api.clone(),
            log: self.log.clone(),
            in_flight: self.in_flight.clone(),
        }
    }

    /// Enqueues through the library, all or nothing.
    pub async fn enqueue_library(&self, jobs: &[LedgerArgs]) -> Vec<Option<Uuid>> {
        let new: Vec<NewJob> = jobs
            .iter()
            .map(|a| NewJob::new("ledger", serde_json::to_value(a).unwrap()).max_attempts(25))
            .collect();
        let (sent_at, began) = (Utc::now(), Instant::now());
        let answered = self.client.enqueue_many(&new).await;
        let latency = began.elapsed();
        let ids: Vec<Option<Uuid>> = match answered {
            Ok(inserted) => inserted.iter().map(|i| Some(i.job.job_id.0)).collect(),
            Err(_) => vec![None; jobs.len()],
        };
        let mut log = self.log.enqueued.lock().await;
        for (a, id) in jobs.iter().zip(&ids) {
            log.push(Enqueued {
                n: a.n,
                via: Via::Library,
                job_id: *id,
                sent_at,
                latency,
                status: None,
            });
        }
        ids
    }

    /// Enqueues one job with `POST /jobs`; 202 is accepted, anything else is not.
    pub async fn enqueue_api(&self, job: &LedgerArgs) -> Option<Uuid> {
        let body = serde_json::json!({"type": "ledger", "payload": job, "max_attempts": 25});
        let (sent_at, began) = (Utc::now(), Instant::now());
        let answer = self
            .http
            .post(format!("{}/jobs", self.api))
            .json(&body)
            .send()
            .await;
        let (status, id) = match answer {
            Ok(r) => {
                let status = r.status().as_u16();
                let body: serde_json::Value = r.json().await.unwrap_or_default();
                let id = body["job_id"]
                    .as_str()
                    .and_then(|s| s.strip_prefix("job_"))
                    .and_then(|h| Uuid::parse_str(h).ok())
                    .filter(|_| status == 202);
                (Some(status), id)
            }
            Err(_) => (None, None),
        };
        self.log.enqueued.lock().await.push(Enqueued {
            n: job.n,
            via: Via::Api,
            job_id: id,
            sent_at,
            latency: began.elapsed(),
            status,
        });
        id
    }

    /// One probe job for the outage check (the same record as any API enqueue).
    pub fn probe_payload(&self) -> LedgerArgs {
        LedgerArgs {
            n: self.next_n(),
            steps: 1,
            step_ms: 10,
            fail_first: false,
        }
    }
}
