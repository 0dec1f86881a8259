-- What each queue asks for, grouped by request shape (allocator.autoscale): allocations waiting
-- for placement, and those holding a reservation on an active runner. Work on a draining runner
-- (one being scaled down) finishes where it is and asks for no new runner.
-- A waiting row of a scheduler that holds its parallelism (max_running, allocator/parallelism.py)
-- counts only while it is among the first (placement order) that the scheduler's room lets run:
-- what the shim's queue_ahead lets the scheduler hand over beyond that waits for the scheduler's
-- own tasks to finish, and more runners would not start it.
WITH in_flight AS (
    SELECT scheduler_job_id, count(*) AS n
      FROM {schema}.allocations
     WHERE state IN ('assigned', 'running') AND scheduler_job_id IS NOT NULL
     GROUP BY scheduler_job_id
), waiting AS (
    SELECT a.queue, a.slots, a.cpu, a.memory_mb, a.scheduler_job_id, a.max_running,
           row_number() OVER (PARTITION BY a.scheduler_job_id
                              ORDER BY a.priority_weight DESC, a.created_at, a.id) AS place
      FROM {schema}.allocations AS a
     WHERE a.state = 'unassigned'
), demand AS (
    SELECT w.queue, w.slots, w.cpu, w.memory_mb, true AS is_waiting
      FROM waiting AS w
      LEFT JOIN in_flight AS f ON f.scheduler_job_id = w.scheduler_job_id
     WHERE w.max_running IS NULL OR w.scheduler_job_id IS NULL
        OR w.place <= w.max_running - coalesce(f.n, 0)
    UNION ALL
    SELECT a.queue, a.slots, a.cpu, a.memory_mb, false
      FROM {schema}.allocations AS a
      JOIN {schema}.runners AS r ON r.id = a.runner_id
     WHERE a.state IN ('assigned', 'running') AND r.state = 'active'
)
SELECT queue, slots, cpu, memory_mb, count(*) AS count, count(*) FILTER (WHERE is_waiting) AS waiting
  FROM demand
 GROUP BY queue, slots, cpu, memory_mb
