-- A new scheduler takes over allocations it knows by id. Finished ones are reported again to it.
UPDATE {schema}.allocations
   SET scheduler_job_id = %(job_id)s,
       reported_state = CASE WHEN state IN ('succeeded', 'failed', 'lost') THEN NULL ELSE reported_state END
 WHERE id = ANY(%(ids)s::uuid[]) AND state <> 'cancelled' AND NOT cancel_requested
RETURNING id, state
