-- running -> succeeded | failed (cancelled when revoked meanwhile), guarded by owner and state: a row already rescued ('lost') stays lost.
UPDATE {schema}.allocations
   SET state = CASE WHEN cancel_requested THEN 'cancelled' ELSE %(state)s END, exit_code = %(exit_code)s, reason = %(reason)s,
       finished_at = clock_timestamp(), workload = NULL
 WHERE id = %(id)s AND runner_id = %(runner_id)s AND state = 'running'
RETURNING id, state
