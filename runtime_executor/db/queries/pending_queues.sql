-- The queues with pending work, by a skip scan of allocations_pending (one index probe per queue,
-- however many rows wait). A placement pass locks and reads only the runners serving these.
WITH RECURSIVE q AS (
    (SELECT queue FROM {schema}.allocations WHERE state = 'unassigned' ORDER BY queue LIMIT 1)
    UNION ALL
    SELECT (SELECT a.queue FROM {schema}.allocations AS a
             WHERE a.state = 'unassigned' AND a.queue > q.queue ORDER BY a.queue LIMIT 1)
      FROM q WHERE q.queue IS NOT NULL
)
SELECT queue FROM q WHERE queue IS NOT NULL
