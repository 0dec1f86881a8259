INSERT INTO {schema}.runners
    (id, name, hostname, pid, queues, slots, cpu, memory_mb, version, lease_expires_at)
VALUES
    (%(id)s, %(name)s, %(hostname)s, %(pid)s, %(queues)s, %(slots)s, %(cpu)s, %(memory_mb)s, %(version)s,
     clock_timestamp() + make_interval(secs => %(lease_timeout)s))
