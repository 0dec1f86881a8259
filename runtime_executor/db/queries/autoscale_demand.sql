-- What each queue asks for, grouped by request shape (allocator.autoscale): allocations waiting
-- for placement, and those holding a reservation on an active runner. Work on a draining runner
-- (one being scaled down) finishes where it is and asks for no new runner.
SELECT a.queue, a.slots, a.cpu, a.memory_mb, count(*) AS count,
       count(*) FILTER (WHERE a.state = 'unassigned') AS waiting
  FROM {schema}.allocations AS a
  LEFT JOIN {schema}.runners AS r ON r.id = a.runner_id
 WHERE a.state = 'unassigned'
    OR (a.state IN ('assigned', 'running') AND r.state = 'active')
 GROUP BY a.queue, a.slots, a.cpu, a.memory_mb
