-- The runner's usage sample of its running tasks, all in one statement: the latest CPU and memory,
-- and the peak memory seen. Guarded by owner and state: a finished or rescued row is left alone.
UPDATE {schema}.allocations AS a
   SET cpu_percent = u.cpu_percent,
       rss_mb = u.rss_mb,
       peak_rss_mb = greatest(coalesce(a.peak_rss_mb, 0), u.rss_mb)
  FROM unnest(%(ids)s::uuid[], %(runner_ids)s::uuid[], %(cpu_percents)s::float8[], %(rss_mbs)s::bigint[])
       AS u(id, runner_id, cpu_percent, rss_mb)
 WHERE a.id = u.id AND a.runner_id = u.runner_id AND a.state = 'running'
