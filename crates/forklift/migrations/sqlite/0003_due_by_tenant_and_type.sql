-- Fetch by (tenant, type), as on PostgreSQL: a backlog of a type no worker handles, or of
-- a tenant whose queue is paused, costs one index step, not a walk over its rows.
drop index forklift_jobs_fetch;
create index forklift_jobs_due on forklift_jobs (queue, tenant_id, job_type, priority, run_at, id)
    where status = 'QUEUED';
