-- unassigned -> assigned, guarded by the state it comes from.
UPDATE {schema}.allocations AS a
   SET state = 'assigned', runner_id = p.runner_id, assigned_at = clock_timestamp(),
       unschedulable_reason = NULL, unschedulable_since = NULL
  FROM unnest(%(ids)s::uuid[], %(runner_ids)s::uuid[]) AS p(id, runner_id)
 WHERE a.id = p.id AND a.state = 'unassigned'
