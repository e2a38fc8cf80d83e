-- A job holds a lease token exactly while it is RUNNING: every change into RUNNING sets
-- one and every change out of it clears it. Stated here, the lease-guarded writes
-- (renew, progress, complete, release) need only `lease_token = $token`, not also
-- `status = 'RUNNING'`: that condition let the planner read the RUNNING jobs' partial
-- index instead of the primary key, and with statistics taken while nothing ran it
-- believed that index empty and compared every running job with every completion (a
-- 2,000-job completion took 30 s once 40,000 jobs were running).
alter table forklift_jobs add constraint forklift_jobs_lease_token_means_running
    check ((lease_token is not null) = (status = 'RUNNING'));
