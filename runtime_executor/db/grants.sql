-- Least-privilege group roles for rtx ("rtx db grant"). {schema} and {prefix} are validated
-- identifiers. Each role gets exactly what its component's statements (db/queries) need.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{prefix}_executor') THEN CREATE ROLE "{prefix}_executor" NOLOGIN; END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{prefix}_allocator') THEN CREATE ROLE "{prefix}_allocator" NOLOGIN; END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{prefix}_runner') THEN CREATE ROLE "{prefix}_runner" NOLOGIN; END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{prefix}_status') THEN CREATE ROLE "{prefix}_status" NOLOGIN; END IF;
END $$;

GRANT USAGE ON SCHEMA {schema} TO "{prefix}_executor", "{prefix}_allocator", "{prefix}_runner", "{prefix}_status";
GRANT SELECT ON {schema}.schema_migrations TO "{prefix}_executor", "{prefix}_allocator", "{prefix}_runner", "{prefix}_status";

-- the shim: queue (insert), report/adopt/revoke (update of bookkeeping columns), read for metrics
GRANT SELECT, INSERT ON {schema}.allocations TO "{prefix}_executor";
GRANT UPDATE (reported_state, scheduler_job_id, cancel_requested, state, finished_at, workload, reason)
    ON {schema}.allocations TO "{prefix}_executor";
GRANT SELECT ON {schema}.runners TO "{prefix}_executor";

-- the allocator: place, mark unschedulable, rescue lost runners, prune
GRANT SELECT, DELETE ON {schema}.allocations TO "{prefix}_allocator";
GRANT UPDATE (state, runner_id, assigned_at, unschedulable_reason, unschedulable_since, finished_at, workload, reason)
    ON {schema}.allocations TO "{prefix}_allocator";
GRANT SELECT, DELETE ON {schema}.runners TO "{prefix}_allocator";
GRANT UPDATE (state, stopped_at) ON {schema}.runners TO "{prefix}_allocator";
GRANT SELECT, DELETE ON {schema}.allocation_events TO "{prefix}_allocator";

-- a runner: register and heartbeat itself, start/finish/release what it was assigned, record usage
GRANT SELECT ON {schema}.allocations TO "{prefix}_runner";
GRANT UPDATE (state, runner_id, assigned_at, started_at, finished_at, pid, process_started_at, exit_code,
              reason, workload, cpu_percent, rss_mb, peak_rss_mb, start_attempts, start_failures)
    ON {schema}.allocations TO "{prefix}_runner";
GRANT SELECT, INSERT ON {schema}.runners TO "{prefix}_runner";
GRANT UPDATE (state, stopped_at, heartbeat_at, lease_expires_at, host_cpu_percent, host_memory_used_mb)
    ON {schema}.runners TO "{prefix}_runner";

-- the status page, `rtx status` and `rtx runner drain|resume` readers: read only, never the workload
GRANT SELECT (id, kind, dag_id, task_id, run_id, map_index, try_number, callback_id, queue, priority_weight,
              slots, cpu, memory_mb, state, runner_id, scheduler_job_id, reported_state, cancel_requested,
              unschedulable_reason, unschedulable_since, created_at, assigned_at, started_at, finished_at,
              pid, process_started_at, exit_code, reason, cpu_percent, rss_mb, peak_rss_mb, max_running)
    ON {schema}.allocations TO "{prefix}_status";
GRANT SELECT ON {schema}.runners TO "{prefix}_status";
