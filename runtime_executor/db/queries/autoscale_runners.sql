-- Live active runners per queue and capacity (allocator.autoscale: the runner size of a queue).
SELECT q.queue, r.slots, r.cpu, r.memory_mb, count(*) AS count
  FROM {schema}.runners AS r
 CROSS JOIN LATERAL unnest(r.queues) AS q(queue)
 WHERE r.state = 'active' AND r.lease_expires_at > clock_timestamp()
 GROUP BY q.queue, r.slots, r.cpu, r.memory_mb
