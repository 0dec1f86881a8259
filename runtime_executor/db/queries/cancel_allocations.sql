-- revoke: unassigned | assigned -> cancelled (never ran); running ones get cancel_requested and the
-- runner stops them and finishes them as 'cancelled'. Neither is reported to the scheduler (revoke_task must emit no event).
UPDATE {schema}.allocations
   SET state = CASE WHEN state = 'running' THEN state ELSE 'cancelled' END,
       cancel_requested = true,
       reported_state = 'cancelled',
       finished_at = CASE WHEN state = 'running' THEN finished_at ELSE clock_timestamp() END,
       workload = CASE WHEN state = 'running' THEN workload END,
       reason = 'revoked by the scheduler'
 WHERE id = ANY(%(ids)s::uuid[]) AND state IN ('unassigned', 'assigned', 'running')
RETURNING id, state
