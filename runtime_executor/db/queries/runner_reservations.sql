-- What the assigned + running allocations hold on each runner serving any of %(queues)s (NULL: every
-- runner). A placement pass reads it in a statement after lock_live_runners with the same queues
-- (Gateway.lock_for_placement), so its snapshot follows the locks. Invariant: it covers every
-- runner that lock locked: a runner's queues are set when it registers and never change, and no
-- liveness filter here can drop one whose lease ran out in between.
SELECT a.runner_id, sum(a.slots) AS slots, sum(a.cpu) AS cpu, sum(a.memory_mb) AS memory_mb
  FROM {schema}.allocations AS a
 WHERE a.state IN ('assigned', 'running')
   AND a.runner_id IN (SELECT r.id FROM {schema}.runners AS r
                        WHERE %(queues)s::text[] IS NULL OR r.queues && %(queues)s::text[])
 GROUP BY a.runner_id
