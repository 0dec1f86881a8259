UPDATE {schema}.allocations AS a
   SET pid = p.pid, process_started_at = clock_timestamp()
  FROM unnest(%(ids)s::uuid[], %(pids)s::integer[]) AS p(id, pid)
 WHERE a.id = p.id AND a.runner_id = %(runner_id)s AND a.state = 'running'
