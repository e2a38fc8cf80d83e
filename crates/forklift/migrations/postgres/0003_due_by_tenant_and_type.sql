-- Fetch by (tenant, type): the fetch steps from one (tenant, type) pair of queued jobs to
-- the next, and reads jobs only of the pairs it may run. A backlog of a type no worker
-- handles, or of a tenant whose queue is paused, costs one index step, not a walk over
-- its rows; and the per-tenant pairs are what fair sharing between tenants needs.
drop index forklift_jobs_fetch;
create index forklift_jobs_due on forklift_jobs (queue, tenant_id, job_type, priority, run_at, id)
    where status = 'QUEUED';
