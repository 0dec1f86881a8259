-- One batch of the audit table's prune: its oldest rows past retention, by id, found through
-- allocation_events_at (migration 0002). Events are never updated, so the ids stay valid.
DELETE FROM {schema}.allocation_events
 WHERE id = ANY(ARRAY(
        SELECT id FROM {schema}.allocation_events
         WHERE at < clock_timestamp() - make_interval(secs => %(retention)s)
         ORDER BY at
         LIMIT %(limit)s))
