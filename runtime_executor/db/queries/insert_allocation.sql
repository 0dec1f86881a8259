-- The shim queues one allocation (in the scheduler's own transaction when the database is shared).
-- A bad request is inserted already 'failed' with its reason, so sync() reports it once.
INSERT INTO {schema}.allocations
    (id, kind, dag_id, task_id, run_id, map_index, try_number, callback_id, queue, priority_weight,
     slots, cpu, memory_mb, state, workload, scheduler_job_id, max_running, reason, finished_at)
VALUES
    (%(id)s, %(kind)s, %(dag_id)s, %(task_id)s, %(run_id)s, %(map_index)s, %(try_number)s, %(callback_id)s,
     %(queue)s, %(priority_weight)s, %(slots)s, %(cpu)s, %(memory_mb)s, %(state)s, %(workload)s,
     %(scheduler_job_id)s, %(max_running)s, %(reason)s, CASE WHEN %(state)s = 'failed' THEN clock_timestamp() END)
ON CONFLICT (id) DO NOTHING
