-- rtx schema, version 5: [core] parallelism held by rtx, so the scheduler can queue ahead.
--
-- max_running is the parallelism of the scheduler that queued the allocation (the shim writes its
-- executor's parallelism). A placement pass never lets more than that many allocations of one
-- scheduler (scheduler_job_id) be assigned or running at once; the rest wait, unassigned, and are
-- placed the moment one of them finishes (a finish NOTIFYs the allocators while work waits). This
-- is what lets the shim accept tasks beyond parallelism (queue_ahead) and still run at most
-- parallelism, as LocalExecutor's fixed pool of workers does with its own backlog.
-- NULL (rows of an older shim): no cap, as before.
ALTER TABLE {schema}.allocations
    ADD COLUMN max_running integer CHECK (max_running IS NULL OR max_running > 0);

-- What a pass looks up per scheduler: which schedulers have capped rows waiting (a skip scan,
-- pending_capped_schedulers.sql), and how many each has assigned or running (scheduler_in_flight.sql).
CREATE INDEX allocations_pending_by_scheduler ON {schema}.allocations (scheduler_job_id)
    WHERE state = 'unassigned' AND max_running IS NOT NULL;
CREATE INDEX allocations_in_flight_by_scheduler ON {schema}.allocations (scheduler_job_id)
    WHERE state IN ('assigned', 'running');
