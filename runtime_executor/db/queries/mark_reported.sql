-- After delivery: mark exactly the rows delivered, in exactly the state delivered. Guarded by that
-- state (a row that moved on since, e.g. running -> succeeded, stays unreported and the next sync
-- delivers its new state) and by the scheduler job (one that adopted the row meanwhile reports it).
UPDATE {schema}.allocations AS a
   SET reported_state = d.state
  FROM unnest(%(ids)s::uuid[], %(states)s::text[]) AS d(id, state)
 WHERE a.id = d.id
   AND a.state = d.state
   AND a.scheduler_job_id IS NOT DISTINCT FROM %(job_id)s
   AND a.reported_state IS DISTINCT FROM a.state
   AND NOT a.cancel_requested
RETURNING a.id, a.state
