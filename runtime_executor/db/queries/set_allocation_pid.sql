UPDATE {schema}.allocations SET pid = %(pid)s, process_started_at = clock_timestamp()
 WHERE id = %(id)s AND runner_id = %(runner_id)s AND state = 'running'
