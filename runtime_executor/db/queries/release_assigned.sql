-- A draining or stopping runner gives back what it has not started: assigned -> unassigned.
UPDATE {schema}.allocations
   SET state = 'unassigned', runner_id = NULL, assigned_at = NULL
 WHERE runner_id = %(runner_id)s AND state = 'assigned'
RETURNING id
