-- Claim pending allocations in placement order, up to %(limit)s per queue (so a queue whose head
-- cannot be placed never hides the work of another queue). Rows another allocator holds are skipped.
SELECT a.id, a.queue, a.slots, a.cpu, a.memory_mb, a.priority_weight, a.unschedulable_reason, a.created_at
  FROM (SELECT DISTINCT queue FROM {schema}.allocations WHERE state = 'unassigned') AS q
 CROSS JOIN LATERAL (
        SELECT id, queue, slots, cpu, memory_mb, priority_weight, unschedulable_reason, created_at
          FROM {schema}.allocations
         WHERE state = 'unassigned' AND queue = q.queue
         ORDER BY priority_weight DESC, created_at, id
         LIMIT %(limit)s
           FOR UPDATE SKIP LOCKED
       ) AS a
 ORDER BY a.priority_weight DESC, a.created_at, a.id
