-- Listing by status: the tenant's jobs of one status, newest first. `GET /jobs` merges the
-- statuses asked for (all six without a filter), each read from its own range, so that
-- a status filter costs as much with ten million finished jobs as with none. It takes
-- the place of the (tenant_id, created_at, id) index: still one index for listing.
drop index forklift_jobs_list;
create index forklift_jobs_list_by_status on forklift_jobs (tenant_id, status, created_at desc, id desc);
