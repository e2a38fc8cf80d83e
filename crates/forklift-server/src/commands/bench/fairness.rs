//! The starvation scenario of issue 13, measured: tenant A's backlog of `--jobs` noop jobs
//! is burned down while tenant B enqueues one job every 50 ms (20/s). B's wait (enqueued
//! to started) says whether the fetch shares capacity between tenants; A's rate, beside
//! the same burn-down without B, whether A still gets what B leaves.

use std::time::{Duration, Instant};

use anyhow::bail;
use forklift::Client;

use super::scenarios::{drained, enqueue_in_calls_of_1000, noop, noop_worker};
use super::{BenchArgs, Fresh, Results};

pub async fn fairness(fresh: &Fresh, args: &BenchArgs, out: &mut Results) -> anyhow::Result<()> {
    for with_small in [false, true] {
        let store = fresh.store().await?;
        let big = Client::new(store.clone());
        let small_tenant = store.tenant_create("small").await?.tenant_id;
        let small = Client::new(store.clone()).for_tenant(small_tenant);
        big.pause_queue("default").await?;
        let (n, _) = enqueue_in_calls_of_1000(&big, args.jobs).await?;
        let worker = noop_worker(store.clone(), args.concurrency);
        tokio::time::sleep(Duration::from_millis(300)).await; // started and idle
        let start = Instant::now();
        big.resume_queue("default").await?;
        // B enqueues on a task of its own, so both runs end alike: when A is drained.
        let stop = tokio_util::sync::CancellationToken::new();
        let enqueuer = with_small.then(|| {
            let (small, stop) = (small.clone(), stop.clone());
            tokio::spawn(async move {
                let mut ids = Vec::new();
                let mut every = tokio::time::interval(Duration::from_millis(50));
                while !stop.is_cancelled() {
                    every.tick().await;
                    ids.push(small.enqueue(noop()).await?.job.job_id);
                }
                anyhow::Ok(ids)
            })
        });
        drained(&big).await?;
        let rate = n as f64 / start.elapsed().as_secs_f64();
        stop.cancel();
        let ids = match enqueuer {
            Some(task) => task.await??,
            None => Vec::new(),
        };
        drained(&small).await?;
        worker.shutdown().await;
        let label = if with_small {
            "beside a small tenant at 20 jobs/s"
        } else {
            "alone"
        };
        out.add(
            format!("fairness: big tenant's burn-down {n}, {label}"),
            "jobs/s",
            rate,
        );
        if with_small {
            let mut waits = Vec::new();
            for id in ids {
                let job = small.get(id).await?;
                let Some(started) = job.started_at else {
                    bail!("the small tenant's job {id} never started");
                };
                waits.push((started - job.created_at).as_seconds_f64() * 1000.0);
            }
            if waits.is_empty() {
                bail!("the small tenant enqueued nothing: the burn-down was over at once");
            }
            waits.sort_by(f64::total_cmp);
            let at = |q: f64| waits[((waits.len() - 1) as f64 * q).round() as usize];
            out.add(
                "fairness: small tenant's jobs measured",
                "jobs",
                waits.len() as f64,
            );
            out.add("fairness: small tenant's wait p50", "ms", at(0.5));
            out.add("fairness: small tenant's wait p99", "ms", at(0.99));
            out.add("fairness: small tenant's wait max", "ms", at(1.0));
        }
    }
    Ok(())
}
