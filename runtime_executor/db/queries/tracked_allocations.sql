-- Allocations this executor still owes an outcome for (to reconcile its in-memory 'running' set).
SELECT id FROM {schema}.allocations
 WHERE id = ANY(%(ids)s::uuid[])
   AND (state IN ('unassigned', 'assigned', 'running') OR reported_state IS DISTINCT FROM state)
