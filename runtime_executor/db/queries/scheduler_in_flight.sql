-- Per scheduler: its allocations that hold a place under its parallelism (assigned or running),
-- read under the parallelism lock (lock_schedulers.sql).
SELECT j.job_id, count(a.id)::integer AS in_flight
  FROM unnest(%(job_ids)s::integer[]) AS j(job_id)
  LEFT JOIN {schema}.allocations AS a
         ON a.scheduler_job_id = j.job_id AND a.state IN ('assigned', 'running')
 GROUP BY j.job_id
