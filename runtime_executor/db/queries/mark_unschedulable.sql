-- Record why nothing can hold these requests; returns only the ones whose reason is new (logged once).
UPDATE {schema}.allocations AS a
   SET unschedulable_reason = p.reason,
       unschedulable_since = coalesce(a.unschedulable_since, clock_timestamp())
  FROM unnest(%(ids)s::uuid[], %(reasons)s::text[]) AS p(id, reason)
 WHERE a.id = p.id AND a.state = 'unassigned' AND a.unschedulable_reason IS DISTINCT FROM p.reason
RETURNING a.id, a.dag_id, a.task_id, a.run_id, a.try_number, a.callback_id, a.unschedulable_reason
