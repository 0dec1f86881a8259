-- What the assigned + running allocations hold on each runner (read after lock_live_runners).
SELECT runner_id, sum(slots) AS slots, sum(cpu) AS cpu, sum(memory_mb) AS memory_mb
  FROM {schema}.allocations
 WHERE state IN ('assigned', 'running') AND runner_id = ANY(%(runner_ids)b::uuid[])
 GROUP BY runner_id
