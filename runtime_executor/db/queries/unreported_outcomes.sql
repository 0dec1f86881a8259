-- What the executor owes its scheduler: every state change not yet reported. Reading marks
-- nothing: sync() delivers these to the scheduler first and then marks them (mark_reported), so a
-- failure in between (a lost connection, an error halfway through) delivers them again, never
-- loses them. Delivery is at least once; a second delivery of the same state changes nothing.
-- process_ran and finished_at tell failure_log whether the reason is rtx's to write into the task's log.
-- A task's start is not reported: the scheduler already holds its external_executor_id (pre-assigned
-- in 3.2+, a QUEUED event at queue time in 3.1), the task reports RUNNING through the Execution API,
-- and an event would only cost the scheduler a locked read of the task instances and one more loop
-- without its idle sleep (docs/performance.md). A callback's start is reported: it sets the Callback
-- row's state.
SELECT id, kind, dag_id, task_id, run_id, map_index, try_number, callback_id, state, reason, exit_code,
       process_started_at IS NOT NULL AS process_ran, finished_at
  FROM {schema}.allocations
 WHERE scheduler_job_id IS NOT DISTINCT FROM %(job_id)s
   AND reported_state IS DISTINCT FROM state
   AND (state IN ('succeeded', 'failed', 'lost') OR (state = 'running' AND kind = 'callback'))
   AND NOT cancel_requested
 ORDER BY created_at, id
