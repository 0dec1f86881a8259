-- What the executor owes its scheduler: every state change not yet reported. Reading marks
-- nothing: sync() delivers these to the scheduler first and then marks them (mark_reported), so a
-- failure in between (a lost connection, an error halfway through) delivers them again, never
-- loses them. Delivery is at least once; a second delivery of the same state changes nothing.
-- process_ran and finished_at tell failure_log whether the reason is rtx's to write into the task's log.
SELECT id, kind, dag_id, task_id, run_id, map_index, try_number, callback_id, state, reason, exit_code,
       process_started_at IS NOT NULL AS process_ran, finished_at
  FROM {schema}.allocations
 WHERE scheduler_job_id IS NOT DISTINCT FROM %(job_id)s
   AND reported_state IS DISTINCT FROM state
   AND state IN ('running', 'succeeded', 'failed', 'lost')
   AND NOT cancel_requested
 ORDER BY created_at, id
