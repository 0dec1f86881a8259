-- Renew the lease. Guarded by state: a runner already declared lost gets no row back and fences itself.
-- It also answers what the runner's slow poll would ask, so that an idle runner sends nothing else
-- (docs/scaling.md): has_work, something assigned to start or running to cancel (a NOTIFY for it may
-- have been lost); stale_running, a row running here longer than a lease (an orphan if the runner
-- has no process for it: runner.starts fails it).
UPDATE {schema}.runners AS r
   SET heartbeat_at = clock_timestamp(),
       lease_expires_at = clock_timestamp() + make_interval(secs => %(lease_timeout)s),
       host_cpu_percent = %(host_cpu_percent)s,
       host_memory_used_mb = %(host_memory_used_mb)s
 WHERE r.id = %(runner_id)s AND r.state IN ('active', 'draining')
RETURNING r.state,
          EXISTS (SELECT 1 FROM {schema}.allocations AS a
                   WHERE a.runner_id = r.id
                     AND ((a.state = 'assigned' AND NOT a.cancel_requested)
                          OR (a.state = 'running' AND a.cancel_requested))) AS has_work,
          EXISTS (SELECT 1 FROM {schema}.allocations AS a
                   WHERE a.runner_id = r.id AND a.state = 'running'
                     AND a.started_at < clock_timestamp() - make_interval(secs => %(lease_timeout)s)) AS stale_running
