SELECT a.task_id, coalesce(a.map_index, -1) AS map_index, r.name AS runner, a.slots, a.cpu, a.memory_mb
  FROM {schema}.allocations a
  LEFT JOIN {schema}.runners r ON r.id = a.runner_id
 WHERE a.kind = 'task' AND a.dag_id = %(dag_id)s AND a.run_id = %(run_id)s
 ORDER BY a.try_number
