SELECT id, kind, dag_id, task_id, run_id, map_index, try_number, callback_id, queue, priority_weight,
       slots, cpu, memory_mb, state, runner_id, unschedulable_reason,
       extract(epoch FROM clock_timestamp() - created_at) AS age,
       extract(epoch FROM clock_timestamp() - started_at) AS running_for,
       cpu_percent, rss_mb, peak_rss_mb, pid
  FROM {schema}.allocations
 WHERE state IN ('unassigned', 'assigned', 'running')
 ORDER BY state, priority_weight DESC, created_at
 LIMIT %(limit)s
