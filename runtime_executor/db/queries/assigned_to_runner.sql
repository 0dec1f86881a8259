SELECT id
  FROM {schema}.allocations
 WHERE runner_id = %(runner_id)s AND state = 'assigned'
 ORDER BY priority_weight DESC, created_at
