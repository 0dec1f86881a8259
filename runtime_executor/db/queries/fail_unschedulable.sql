-- unassigned -> failed for requests unschedulable longer than the timeout.
UPDATE {schema}.allocations
   SET state = 'failed', finished_at = clock_timestamp(), workload = NULL,
       reason = 'unschedulable for ' || round(%(timeout)s::numeric) || ' s: ' || unschedulable_reason
 WHERE state = 'unassigned' AND unschedulable_reason IS NOT NULL
   AND unschedulable_since < clock_timestamp() - make_interval(secs => %(timeout)s)
RETURNING id, dag_id, task_id, run_id, try_number, callback_id, reason
