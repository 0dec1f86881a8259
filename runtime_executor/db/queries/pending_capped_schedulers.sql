-- The schedulers with waiting rows that carry a parallelism (max_running), each with that figure:
-- a skip scan of allocations_pending_by_scheduler (one probe per scheduler), then that scheduler's
-- waiting rows for the figure (at most its parallelism plus its queue_ahead).
WITH RECURSIVE s AS (
    (SELECT scheduler_job_id AS job_id FROM {schema}.allocations
      WHERE state = 'unassigned' AND max_running IS NOT NULL AND scheduler_job_id IS NOT NULL
      ORDER BY scheduler_job_id LIMIT 1)
    UNION ALL
    SELECT (SELECT a.scheduler_job_id FROM {schema}.allocations AS a
             WHERE a.state = 'unassigned' AND a.max_running IS NOT NULL AND a.scheduler_job_id > s.job_id
             ORDER BY a.scheduler_job_id LIMIT 1)
      FROM s WHERE s.job_id IS NOT NULL
)
SELECT s.job_id,
       (SELECT max(a.max_running) FROM {schema}.allocations AS a
         WHERE a.state = 'unassigned' AND a.max_running IS NOT NULL AND a.scheduler_job_id = s.job_id) AS max_running
  FROM s WHERE s.job_id IS NOT NULL
