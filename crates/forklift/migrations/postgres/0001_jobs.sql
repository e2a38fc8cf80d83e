-- The job table. Statuses are text with a check, readable in psql and the same in SQLite.
create table forklift_jobs (
    id               uuid primary key,
    tenant_id        uuid not null,
    job_type         text not null,
    queue            text not null default 'default',
    status           text not null default 'QUEUED'
                     check (status in ('QUEUED', 'RUNNING', 'SUCCESS', 'FAILED', 'PARTIAL_SUCCESS', 'CANCELLED')),
    priority         smallint not null default 5 check (priority between 0 and 9),
    progress         smallint not null default 0 check (progress between 0 and 100),
    payload          jsonb not null default '{}',
    result           jsonb,
    result_url       text,
    errors           jsonb not null default '[]',
    attempt          integer not null default 0,
    max_attempts     integer not null default 5,
    run_at           timestamptz not null default now(),
    timeout_seconds  integer,
    unique_key       text,
    tags             jsonb not null default '[]',
    cancel_requested boolean not null default false,
    -- The lease: who runs the job, until when, and the token every write of this attempt must show.
    lease_owner      text,
    lease_token      uuid,
    lease_expires_at timestamptz,
    created_at       timestamptz not null default now(),
    updated_at       timestamptz not null default now(),
    started_at       timestamptz,
    completed_at     timestamptz
);

-- Fetch: the next due jobs of one queue, in priority, run_at, id order. Partial, so the
-- index holds only queued jobs and stays small however long the history grows.
create index forklift_jobs_fetch on forklift_jobs (queue, priority, run_at, id) where status = 'QUEUED';

-- Rescue: running jobs by lease expiry.
create index forklift_jobs_lease on forklift_jobs (lease_expires_at) where status = 'RUNNING';

-- Idempotency: one unfinished job per tenant and key. Finished jobs free the key.
create unique index forklift_jobs_unique_key on forklift_jobs (tenant_id, unique_key)
    where unique_key is not null and status in ('QUEUED', 'RUNNING');

-- Listing, newest first, per tenant (keyset pagination on created_at, id).
create index forklift_jobs_list on forklift_jobs (tenant_id, created_at desc, id desc);

-- Pruning finished jobs by age.
create index forklift_jobs_finished on forklift_jobs (completed_at)
    where status in ('SUCCESS', 'FAILED', 'PARTIAL_SUCCESS', 'CANCELLED');

-- Paused queues, per tenant: a tenant pausing `default` must not stop anyone else's jobs.
create table forklift_queue_pauses (
    tenant_id  uuid not null,
    queue      text not null,
    paused_at  timestamptz not null default now(),
    primary key (tenant_id, queue)
);

-- Leadership for maintenance: one row per role, held until expires_at unless renewed.
create table forklift_leaders (
    name       text primary key,
    leader_id  text not null,
    elected_at timestamptz not null default now(),
    expires_at timestamptz not null
);
