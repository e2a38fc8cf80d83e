//! The starvation scenario of issue 13, measured: tenant A's backlog of `--jobs` noop jobs
//! is burned down while tenant B enqueues one job every 50 ms (20/s). B's wait (enqueued
//! to started) says whether the fetch shares capacity between tenants; A's rate, beside
//! the same burn-down without B, whether A still gets what B leaves.

use std::time::{Duration, Instant};

use forklift::{Client, Registry, builtin};

use super::scenarios::{bench_worker, drained, enqueue_in_calls_of_1000, noop};
use super::{BenchArgs, Fresh, Results};

pub async fn fairness(fresh: &Fresh, args: &BenchArgs, out: &mut Results) -> anyhow::Result<()> {
    for with_small in [false, true] {
        let store = fresh.store().await?;
        let big = Client::new(store.clone());
        let small_tenant = store.tenant_create("small").await?.tenant_id;
        let small = Client::new(store.clone()).for_tenant(small_tenant);
        big.pause_queue("default").await?;
        let (n, _) = enqueue_in_calls_of_1000(&big, args.jobs).await?;
        let mut registry = Registry::new();
        registry.register("noop", builtin::Noop);
        let worker = bench_worker(store.clone(), registry, args.concurrency);
        tokio::time::sleep(Duration::from_millis(300)).await; // started and idle
        let start = Instant::now();
        big.resume_queue("default").await?;
        let mut ids = Vec::new();
        if with_small {
            let mut every = tokio::time::interval(Duration::from_millis(50));
            while start.elapsed() < Duration::from_secs(300) {
                every.tick().await;
                ids.push(small.enqueue(noop()).await?.job.job_id);
                let left = store.job_counts(big.tenant()).await?;
                let unfinished: i64 = left
                    .iter()
                    .filter(|c| !c.status.is_final())
                    .map(|c| c.count)
                    .sum();
                if unfinished == 0 {
                    break;
                }
            }
        }
        drained(&big).await?;
        let rate = n as f64 / start.elapsed().as_secs_f64();
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
                if let Some(started) = job.started_at {
                    waits.push((started - job.created_at).as_seconds_f64() * 1000.0);
                }
            }
            waits.sort_by(f64::total_cmp);
            let at = |q: f64| waits[((waits.len() - 1) as f64 * q).round() as usize];
            if !waits.is_empty() {
                out.add("fairness: small tenant's wait p50", "ms", at(0.5));
                out.add("fairness: small tenant's wait p99", "ms", at(0.99));
                out.add("fairness: small tenant's wait max", "ms", at(1.0));
            }
        }
    }
    Ok(())
}
