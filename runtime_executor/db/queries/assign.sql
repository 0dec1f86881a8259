-- unassigned -> assigned, guarded by the state it comes from and by the runner it goes to.
-- The ctids are the rows' locations as claim_unassigned returned them: this transaction holds
-- those rows locked FOR UPDATE, so they cannot have moved, and a TID scan finds them without
-- scanning every pending row. The id and state guard stay: a row that does not match is simply
-- not assigned (and is placed again by a later pass).
-- Invariant: nothing lands on a runner that is not live. The runner is re-checked here, in the
-- pass's transaction under its placement lock, on this statement's snapshot (active, lease not
-- expired on the database clock); a runner that became lost since lock_live_runners read it gets
-- nothing. (Rescue committing between this statement and the pass's commit is caught by rescue's
-- next sweep: rescue_stranded_allocations.) The runners are only read, never locked.
-- Parameters are sent binary: dumping 5,000 UUIDs as text costs ~15 ms a list in the client.
UPDATE {schema}.allocations AS a
   SET state = 'assigned', runner_id = p.runner_id, assigned_at = clock_timestamp(),
       unschedulable_reason = NULL, unschedulable_since = NULL
  FROM unnest(%(ids)b::uuid[], %(runner_ids)b::uuid[]) AS p(id, runner_id)
  JOIN {schema}.runners AS r
    ON r.id = p.runner_id AND r.state = 'active' AND r.lease_expires_at > clock_timestamp()
 WHERE a.ctid = ANY(%(ctids)b::text[]::tid[]) AND a.id = p.id AND a.state = 'unassigned'
