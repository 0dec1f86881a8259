SELECT r.id, r.name, r.hostname, r.pid, r.queues, r.state, r.slots, r.cpu, r.memory_mb,
       coalesce(sum(a.slots), 0) AS used_slots, coalesce(sum(a.cpu), 0) AS used_cpu,
       coalesce(sum(a.memory_mb), 0) AS used_memory_mb,
       count(a.id) AS allocation_count,
       r.lease_expires_at < clock_timestamp() AS lease_expired,
       extract(epoch FROM clock_timestamp() - r.heartbeat_at) AS heartbeat_age,
       r.host_cpu_percent, r.host_memory_used_mb, r.started_at
  FROM {schema}.runners AS r
  LEFT JOIN {schema}.allocations AS a ON a.runner_id = r.id AND a.state IN ('assigned', 'running')
 WHERE r.state IN ('active', 'draining')
    OR r.stopped_at > clock_timestamp() - make_interval(secs => %(recent)s)
 GROUP BY r.id
 ORDER BY r.name, r.id
