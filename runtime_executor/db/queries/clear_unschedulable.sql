UPDATE {schema}.allocations
   SET unschedulable_reason = NULL, unschedulable_since = NULL
 WHERE id = ANY(%(ids)s::uuid[]) AND state = 'unassigned' AND unschedulable_reason IS NOT NULL
