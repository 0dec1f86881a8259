-- Exact counts for the status snapshot, by state and queue (and how many wait unschedulable).
-- Invariant: every number the status page or `rtx status` shows comes from an aggregate like
-- this one, never from the (limited) row list of status_allocations.
SELECT state, queue, count(*) AS count,
       count(*) FILTER (WHERE unschedulable_reason IS NOT NULL) AS unschedulable
  FROM {schema}.allocations
 GROUP BY state, queue
 ORDER BY state, queue
