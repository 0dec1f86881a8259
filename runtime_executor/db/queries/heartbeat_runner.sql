-- Renew the lease. Guarded by state: a runner already declared lost gets no row back and fences itself.
UPDATE {schema}.runners
   SET heartbeat_at = clock_timestamp(),
       lease_expires_at = clock_timestamp() + make_interval(secs => %(lease_timeout)s),
       host_cpu_percent = %(host_cpu_percent)s,
       host_memory_used_mb = %(host_memory_used_mb)s
 WHERE id = %(runner_id)s AND state IN ('active', 'draining')
RETURNING state
