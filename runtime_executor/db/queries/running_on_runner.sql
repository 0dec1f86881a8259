-- What the database says this runner runs (started a while ago), to find rows without a process.
SELECT id FROM {schema}.allocations
 WHERE runner_id = %(runner_id)s AND state = 'running'
   AND started_at < clock_timestamp() - make_interval(secs => %(older_than)s)
