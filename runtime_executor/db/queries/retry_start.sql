-- A start that failed before any of the task's code ran (the task process could not be launched;
-- the reply to a start was lost, so no process exists): running | assigned -> unassigned, to be
-- placed again without using one of the user's Airflow retries, at most %(retries)s times; the
-- failure after that is final: -> failed, the reason listing every attempt's.
-- Guarded by owner and state like every transition: a row rescued (lost), revoked or finished
-- meanwhile is left alone, and a row revoked while running ends cancelled.
-- Invariant: only a start whose task process never ran reaches this statement (the runner's
-- Outcome.start_failed), so putting the row back can never run the task's code twice.
UPDATE {schema}.allocations
   SET start_attempts = start_attempts + 1,
       start_failures = start_failures || (
           'attempt ' || (start_attempts + 1) || ' (runner ' || runner_id || '): ' || %(reason)s::text),
       state = CASE WHEN cancel_requested THEN 'cancelled'
                    WHEN start_attempts < %(retries)s THEN 'unassigned'
                    ELSE 'failed' END,
       runner_id = CASE WHEN NOT cancel_requested AND start_attempts < %(retries)s THEN NULL ELSE runner_id END,
       assigned_at = CASE WHEN NOT cancel_requested AND start_attempts < %(retries)s THEN NULL ELSE assigned_at END,
       started_at = NULL, pid = NULL, process_started_at = NULL, exit_code = NULL,
       reason = CASE WHEN cancel_requested OR start_attempts < %(retries)s THEN NULL
                     ELSE 'the task never started (' || (start_attempts + 1) || ' failed starts): '
                          || array_to_string(start_failures || (
                              'attempt ' || (start_attempts + 1) || ' (runner ' || runner_id || '): '
                              || %(reason)s::text), '; ')
                END,
       finished_at = CASE WHEN cancel_requested OR start_attempts >= %(retries)s THEN clock_timestamp() END,
       workload = CASE WHEN cancel_requested OR start_attempts >= %(retries)s THEN NULL ELSE workload END
 WHERE id = %(id)s AND runner_id = %(runner_id)s AND state IN ('running', 'assigned')
RETURNING id, state
