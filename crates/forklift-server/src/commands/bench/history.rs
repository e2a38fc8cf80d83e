//! The `history` scenario: the same reads and work on an empty table and after
//! `--history-rows` finished jobs (default ten million) were added to it, in one run, so
//! each figure is a ratio. PostgreSQL only: the rows are made by `generate_series`, a
//! million per statement, in minutes rather than hours.

use std::time::{Duration, Instant};

use anyhow::bail;
use forklift::{Client, NewJob};

use super::scenarios::{enqueue_in_calls_of_1000, resume_and_drain, serve_as_shipped};
use super::{BenchArgs, Concrete, Fresh, Results};

/// The reads a dashboard makes, as (label, path).
const READS: &[(&str, &str)] = &[
    ("GET /queues", "/queues"),
    ("GET /stats", "/stats"),
    ("GET /jobs", "/jobs?limit=50"),
    ("GET /jobs?status=FAILED", "/jobs?limit=50&status=FAILED"),
    ("GET /jobs?status=QUEUED", "/jobs?limit=50&status=QUEUED"),
    ("GET /jobs?type=report", "/jobs?limit=50&type=report"),
    ("GET /jobs?queue=default", "/jobs?limit=50&queue=default"),
    ("GET /jobs?tag=import", "/jobs?limit=50&tag=import"),
];

/// Calls of each read per measurement.
const CALLS: usize = 100;

pub async fn history(fresh: &Fresh, args: &BenchArgs, out: &mut Results) -> anyhow::Result<()> {
    let (store, concrete) = fresh.stores().await?;
    let Concrete::Pg(pg) = concrete else {
        eprintln!("history: PostgreSQL only; skipped");
        return Ok(());
    };
    // Without the per-tenant rate limit: the reads come faster than 100 a second.
    let (base, worker) = serve_as_shipped(store.clone(), false).await?;
    let http = reqwest::Client::new();
    let client = Client::new(store.clone());
    for size in ["empty", "history"] {
        if size == "history" {
            fill(pg.pool(), args.history_rows).await?;
        }
        // A little live work, so that the filtered reads find something.
        client.pause_queue("default").await?;
        client
            .enqueue_many(&vec![NewJob::new("noop", serde_json::json!({})); 100])
            .await?;
        // Both phases start from written-out pages (a previous run's dropped schema, or
        // the fill, would otherwise be flushed during the measurements).
        checkpoint(pg.pool()).await;
        for (label, path) in READS {
            let url = format!("{base}{path}");
            let mut ms = Vec::with_capacity(CALLS);
            for _ in 0..CALLS {
                let t = Instant::now();
                let resp = http.get(&url).send().await?;
                if !resp.status().is_success() {
                    bail!("{label} answered {}", resp.status());
                }
                resp.bytes().await?;
                ms.push(t.elapsed().as_secs_f64() * 1e3);
            }
            ms.sort_by(|a, b| a.total_cmp(b));
            out.add(
                format!("{label} p95, {size}"),
                "ms",
                ms[CALLS * 95 / 100 - 1],
            );
        }
        let (n, rate) = enqueue_in_calls_of_1000(&client, args.jobs).await?;
        out.add(
            format!("batch enqueue {n} (calls of 1,000), {size}"),
            "jobs/s",
            rate,
        );
        // The burn-down of what was just enqueued, by the worker `serve` runs.
        let rate = resume_and_drain(&client, n + 100).await?;
        out.add(format!("burn-down {n}, {size}"), "jobs/s", rate);
    }
    worker.shutdown().await;
    Ok(())
}

/// Adds `rows` finished jobs of the default tenant, created over the last week: one in
/// ten of type `report`, one in fifty failed, one in a hundred tagged `import`.
async fn fill(pool: &sqlx::PgPool, rows: usize) -> anyhow::Result<()> {
    let step = 1_000_000;
    let started = Instant::now();
    let span = Duration::from_secs(7 * 86_400).as_secs_f64() / rows.max(1) as f64;
    let mut from = 0;
    while from < rows {
        let to = (from + step).min(rows);
        sqlx::query(
            "insert into forklift_jobs (id, tenant_id, job_type, queue, status, progress, payload, result,
                 tags, attempt, run_at, created_at, updated_at, started_at, completed_at)
             select lpad(to_hex(g), 32, '0')::uuid, $1,
                    case when g % 10 = 0 then 'report' else 'noop' end, 'default',
                    case when g % 50 = 0 then 'FAILED' else 'SUCCESS' end, 100, '{\"n\": 1}', '{\"ok\": true}',
                    case when g % 100 = 0 then '[\"import\"]'::jsonb else '[]'::jsonb end, 1,
                    t, t, t, t, t + interval '5 milliseconds'
             from generate_series($2::int8, $3::int8 - 1) g,
                  lateral (select now() - interval '7 days' + g * make_interval(secs => $4) as t) x",
        )
        .bind(forklift::TenantId::DEFAULT.0)
        .bind(from as i64)
        .bind(to as i64)
        .bind(span)
        .execute(pool)
        .await?;
        from = to;
        eprintln!("history: {from} rows in {:.0?}", started.elapsed());
    }
    sqlx::query("vacuum analyze forklift_jobs")
        .execute(pool)
        .await?;
    Ok(())
}

/// Writes dirty pages out now rather than during a measurement (needs a superuser; without
/// one, the figures may carry a checkpoint's writes).
async fn checkpoint(pool: &sqlx::PgPool) {
    if let Err(e) = sqlx::query("checkpoint").execute(pool).await {
        eprintln!("history: no checkpoint ({e}); figures may include its writes");
    }
}
