-- One batch of the runners' prune: stopped or lost past retention, and holding nothing (rescue's
-- sweep has made everything on them terminal or given it back).
DELETE FROM {schema}.runners
 WHERE id = ANY(ARRAY(
        SELECT r.id FROM {schema}.runners AS r
         WHERE r.state IN ('stopped', 'lost')
           AND r.stopped_at < clock_timestamp() - make_interval(secs => %(retention)s)
           AND NOT EXISTS (SELECT 1 FROM {schema}.allocations AS a
                            WHERE a.runner_id = r.id AND a.state IN ('assigned', 'running'))
         LIMIT %(limit)s))
