-- The job table, as in PostgreSQL, in SQLite's types: ids and lease tokens are 16-byte
-- UUID blobs, timestamps are integer microseconds since the Unix epoch (UTC, computed by
-- Forklift, so that integer order is time order), JSON is text checked by json_valid.
-- STRICT makes SQLite refuse a value of the wrong type instead of storing it anyway.
create table forklift_jobs (
    id               blob primary key check (length(id) = 16),
    tenant_id        blob not null check (length(tenant_id) = 16),
    job_type         text not null,
    queue            text not null default 'default',
    status           text not null default 'QUEUED'
                     check (status in ('QUEUED', 'RUNNING', 'SUCCESS', 'FAILED', 'PARTIAL_SUCCESS', 'CANCELLED')),
    priority         integer not null default 5 check (priority between 0 and 9),
    progress         integer not null default 0 check (progress between 0 and 100),
    payload          text not null default '{}' check (json_valid(payload)),
    result           text check (result is null or json_valid(result)),
    result_url       text,
    errors           text not null default '[]' check (json_valid(errors)),
    attempt          integer not null default 0,
    max_attempts     integer not null default 5,
    run_at           integer not null,
    timeout_seconds  integer,
    unique_key       text,
    tags             text not null default '[]' check (json_valid(tags)),
    cancel_requested integer not null default 0 check (cancel_requested in (0, 1)),
    -- The lease: who runs the job, until when, and the token every write of this attempt must show.
    lease_owner      text,
    lease_token      blob,
    lease_expires_at integer,
    created_at       integer not null,
    updated_at       integer not null,
    started_at       integer,
    completed_at     integer
) strict;

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
    tenant_id  blob not null,
    queue      text not null,
    paused_at  integer not null,
    primary key (tenant_id, queue)
) strict;

-- Leadership for maintenance: one row per role, held until expires_at unless renewed.
create table forklift_leaders (
    name       text primary key,
    leader_id  text not null,
    elected_at integer not null,
    expires_at integer not null
) strict;
