-- One cheap row for the executor shim's gauges: open capacity over the live active runners and the
-- live allocations by state. Free capacity never counts below zero on a runner.
WITH live AS (
    SELECT id, slots, cpu, memory_mb
      FROM {schema}.runners
     WHERE state = 'active' AND lease_expires_at > clock_timestamp()
), held AS (
    SELECT runner_id, sum(slots) AS slots, sum(cpu) AS cpu, sum(memory_mb) AS memory_mb
      FROM {schema}.allocations
     WHERE state IN ('assigned', 'running') AND runner_id IN (SELECT id FROM live)
     GROUP BY runner_id
), counts AS (
    SELECT count(*) FILTER (WHERE state = 'unassigned') AS unassigned,
           count(*) FILTER (WHERE state = 'assigned') AS assigned,
           count(*) FILTER (WHERE state = 'running') AS running,
           count(*) FILTER (WHERE state = 'unassigned' AND unschedulable_reason IS NOT NULL) AS unschedulable
      FROM {schema}.allocations
     WHERE state IN ('unassigned', 'assigned', 'running')
)
SELECT (SELECT count(*) FROM live) AS runners,
       coalesce(sum(greatest(0, l.slots - coalesce(h.slots, 0))), 0)::bigint AS open_slots,
       coalesce(sum(greatest(0, l.cpu - coalesce(h.cpu, 0))), 0)::float8 AS open_cpu,
       coalesce(sum(greatest(0, l.memory_mb - coalesce(h.memory_mb, 0))), 0)::bigint AS open_memory_mb,
       (SELECT unassigned FROM counts) AS unassigned,
       (SELECT assigned FROM counts) AS assigned,
       (SELECT running FROM counts) AS running,
       (SELECT unschedulable FROM counts) AS unschedulable
  FROM live AS l
  LEFT JOIN held AS h ON h.runner_id = l.id
