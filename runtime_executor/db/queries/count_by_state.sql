SELECT state, queue, count(*) FROM {schema}.allocations GROUP BY state, queue ORDER BY state, queue
