-- Counters, as on PostgreSQL, so that `/queues` and `/stats` read a few rows instead of
-- grouping the whole history. SQLite has one writer, so triggers update the totals
-- directly; a statement that changes no status (a heartbeat, a progress write) fires none.
create table forklift_counts (
    tenant_id blob    not null,
    queue     text    not null,
    job_type  text    not null,
    status    text    not null,
    jobs      integer not null,
    primary key (tenant_id, queue, job_type, status)
) strict, without rowid;

-- Per tenant and minute (integer µs since the epoch, a multiple of 60 s): completed and
-- failed attempts, and wait and run-time histograms, as the workers report them (see the
-- PostgreSQL migration for the buckets). Kept two hours.
create table forklift_minutes (
    tenant_id blob    not null,
    minute    integer not null,
    metric    text    not null check (metric in ('completed', 'failed', 'wait', 'run')),
    bucket    integer not null,
    jobs      integer not null,
    primary key (tenant_id, minute, metric, bucket)
) strict, without rowid;
-- Forgetting old minutes is a range of this index, not a scan.
create index forklift_minutes_minute on forklift_minutes (minute);

create trigger forklift_count_inserted after insert on forklift_jobs begin
    insert into forklift_counts values (new.tenant_id, new.queue, new.job_type, new.status, 1)
    on conflict do update set jobs = jobs + 1;
end;

create trigger forklift_count_deleted after delete on forklift_jobs begin
    update forklift_counts set jobs = jobs - 1
    where (tenant_id, queue, job_type, status) = (old.tenant_id, old.queue, old.job_type, old.status);
end;

create trigger forklift_count_updated after update of tenant_id, queue, job_type, status on forklift_jobs
when (old.tenant_id, old.queue, old.job_type, old.status) is not (new.tenant_id, new.queue, new.job_type, new.status)
begin
    update forklift_counts set jobs = jobs - 1
    where (tenant_id, queue, job_type, status) = (old.tenant_id, old.queue, old.job_type, old.status);
    insert into forklift_counts values (new.tenant_id, new.queue, new.job_type, new.status, 1)
    on conflict do update set jobs = jobs + 1;
end;

insert into forklift_counts
select tenant_id, queue, job_type, status, count(*) from forklift_jobs group by 1, 2, 3, 4;
