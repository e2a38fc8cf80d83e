-- On PostgreSQL this version adds a constraint (a lease token exactly while RUNNING) so
-- that the lease-guarded writes can name the token alone and keep a good plan. SQLite
-- cannot add a check to a table without rebuilding it, and its planner has no such
-- trap, so its writes keep naming both; the version is here to keep the lists alike.
select 1;
