-- Claim pending allocations in placement order, per queue up to that queue's limit (what its free
-- capacity could take, and always a few from the head, so a large request at the head is seen and
-- gets its reservation). A queue whose head cannot be placed never hides another queue's work.
-- Rows another allocator holds are skipped. ctid: where the locked row is, for assign.
-- %(queues)s: the queues pending_queues found (the pass locked their runners); a queue that got its
-- first row since is claimed by the next pass, which that row's NOTIFY starts.
-- %(full)s: schedulers already at their parallelism (allocator/parallelism.py): their waiting rows are
-- left to a later pass, so they never fill a claim ahead of rows that could run now.
SELECT a.ctid::text AS ctid, a.id, a.queue, a.slots, a.cpu, a.memory_mb, a.priority_weight, a.unschedulable_reason, a.created_at,
       a.scheduler_job_id, a.max_running,
       extract(epoch FROM clock_timestamp() - a.created_at)::float8 AS waited_s  -- database clock
  FROM unnest(%(queues)s::text[], %(limits)s::integer[]) AS l(queue, lim)
  CROSS JOIN LATERAL (
        SELECT ctid, id, queue, slots, cpu, memory_mb, priority_weight, unschedulable_reason, created_at,
               scheduler_job_id, max_running
          FROM {schema}.allocations
         WHERE state = 'unassigned' AND queue = l.queue
           AND (scheduler_job_id IS NULL OR max_running IS NULL OR scheduler_job_id <> ALL(%(full)s::integer[]))
         ORDER BY priority_weight DESC, created_at, id
         LIMIT l.lim
           FOR UPDATE SKIP LOCKED
       ) AS a
 ORDER BY a.priority_weight DESC, a.created_at, a.id
