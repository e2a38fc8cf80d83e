-- Counters, so that `/queues` and `/stats` read a few rows instead of grouping the whole
-- history (10 million finished jobs must answer as fast as none).
--
-- Every statement that inserts, updates or deletes jobs appends what it changed to
-- `forklift_count_deltas` (statement-level triggers: one grouped insert per statement, not
-- one per row). Appending takes no lock that another writer waits for, so concurrent
-- fetches and completions do not queue on a hot counter row. The store folds the deltas
-- into `forklift_counts` every second; readers add the deltas not folded yet, so counts
-- are exact whenever they are read.

-- The trigger function keeps the search_path of this migration (`set search_path from
-- current`): a session that writes to the jobs by a schema-qualified name, with another
-- search_path, still counts into this schema's tables.

-- Jobs by tenant, queue, type and status: what the table holds now.
create table forklift_counts (
    tenant_id uuid   not null,
    queue     text   not null,
    job_type  text   not null,
    status    text   not null,
    jobs      bigint not null,
    primary key (tenant_id, queue, job_type, status)
);

create table forklift_count_deltas (
    tenant_id uuid   not null,
    queue     text   not null,
    job_type  text   not null,
    status    text   not null,
    jobs      bigint not null
);
-- A read takes its tenant's deltas only, however many a slow fold has left.
create index forklift_count_deltas_tenant on forklift_count_deltas (tenant_id);

-- Per tenant and minute: attempts completed (SUCCESS, PARTIAL_SUCCESS) and failed, and
-- histograms of the wait (run_at to start) and of the run time (start to finish), as the
-- workers that ran them report them every second. `bucket` is the histogram's: 0 under
-- 1 ms, then b for [2^((b-1)/4), 2^(b/4)) ms, four buckets per doubling (within 10 % of
-- any value), up to 100 (about 8 hours and more). Kept two hours.
create table forklift_minutes (
    tenant_id uuid        not null,
    minute    timestamptz not null,
    metric    text        not null check (metric in ('completed', 'failed', 'wait', 'run')),
    bucket    smallint    not null,
    jobs      bigint      not null,
    primary key (tenant_id, minute, metric, bucket)
);
-- Forgetting old minutes is a range of this index, not a scan.
create index forklift_minutes_minute on forklift_minutes (minute);

-- One function for the three triggers below: the rows as they were (`before`: deletes and
-- updates) are taken away and the rows as they are (`after`: inserts and updates) added.
-- A statement that changes no status (a heartbeat, a progress write) cancels out and adds
-- nothing. (Grouping each side apart spares joining old rows to new, which cost more than
-- the statement.)
create function forklift_count_changed() returns trigger language plpgsql
set search_path from current as $$
begin
    if tg_op = 'INSERT' then
        insert into forklift_count_deltas
        select tenant_id, queue, job_type, status, count(*) from after group by 1, 2, 3, 4;
    elsif tg_op = 'DELETE' then
        insert into forklift_count_deltas
        select tenant_id, queue, job_type, status, -count(*) from before group by 1, 2, 3, 4;
    else
        insert into forklift_count_deltas
        select tenant_id, queue, job_type, status, sum(jobs) from (
            select tenant_id, queue, job_type, status, -count(*) as jobs from before group by 1, 2, 3, 4
            union all
            select tenant_id, queue, job_type, status, count(*) from after group by 1, 2, 3, 4
        ) c group by 1, 2, 3, 4 having sum(jobs) <> 0;
    end if;
    return null;
end $$;

create trigger forklift_count_inserted after insert on forklift_jobs
    referencing new table as after for each statement execute function forklift_count_changed();
create trigger forklift_count_deleted after delete on forklift_jobs
    referencing old table as before for each statement execute function forklift_count_changed();
create trigger forklift_count_updated after update on forklift_jobs
    referencing old table as before new table as after for each statement execute function forklift_count_changed();

-- The jobs already there. Creating the triggers locked out writers until this migration
-- commits, so no change falls between the count and the first delta.
insert into forklift_counts
select tenant_id, queue, job_type, status, count(*) from forklift_jobs group by 1, 2, 3, 4;
