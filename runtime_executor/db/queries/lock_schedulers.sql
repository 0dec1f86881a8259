-- The parallelism lock: a transaction-scoped advisory lock per scheduler whose waiting rows carry a
-- max_running (pending_capped_schedulers.sql), taken in id order after the runners' placement locks
-- (every pass takes them in that order, so allocators never deadlock). Two allocators therefore
-- never both count the same room under one scheduler's parallelism. A separate statement from the
-- count (scheduler_in_flight.sql): under READ COMMITTED the count's snapshot is then taken after
-- the lock is granted.
SELECT j.job_id
  FROM (SELECT DISTINCT unnest(%(job_ids)s::integer[]) AS job_id ORDER BY 1) AS j
 CROSS JOIN LATERAL (SELECT pg_advisory_xact_lock(hashtextextended('{schema}.parallelism:' || j.job_id::text, 0))) AS k
 ORDER BY j.job_id
