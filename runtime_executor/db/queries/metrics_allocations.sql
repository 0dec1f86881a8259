-- Live allocations per queue and state, and how many of the pending ones are unschedulable (the
-- allocator's gauges: queue depth for autoscalers). Finished rows are not counted (see prune).
-- Every queue a live runner serves appears (with zeros), so its depth reads 0 rather than absent.
SELECT queue, state, count(*) AS count,
       count(*) FILTER (WHERE unschedulable_reason IS NOT NULL) AS unschedulable
  FROM {schema}.allocations
 WHERE state IN ('unassigned', 'assigned', 'running')
 GROUP BY queue, state
UNION ALL
SELECT DISTINCT unnest(queues) AS queue, 'unassigned' AS state, 0 AS count, 0 AS unschedulable
  FROM {schema}.runners
 WHERE state IN ('active', 'draining')
