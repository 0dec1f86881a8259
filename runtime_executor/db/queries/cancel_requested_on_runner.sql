SELECT id FROM {schema}.allocations
 WHERE runner_id = %(runner_id)s AND state = 'running' AND cancel_requested
