WITH gone AS (
    DELETE FROM {schema}.allocations
     WHERE finished_at < clock_timestamp() - make_interval(secs => %(retention)s)
       AND state IN ('succeeded', 'failed', 'lost', 'cancelled')
       AND (reported_state IS NOT DISTINCT FROM state OR state = 'cancelled')
    RETURNING id
), events AS (
    DELETE FROM {schema}.allocation_events
     WHERE at < clock_timestamp() - make_interval(secs => %(retention)s)
), runners AS (
    DELETE FROM {schema}.runners AS r
     WHERE r.state IN ('stopped', 'lost')
       AND r.stopped_at < clock_timestamp() - make_interval(secs => %(retention)s)
)
SELECT count(*) FROM gone
