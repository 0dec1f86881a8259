-- Rescue, step 1: runners whose lease expired become 'lost' (then rescue_stranded_allocations
-- sweeps their work, in the same transaction, on a newer snapshot that sees this change).
-- Guarded by state and lease: a runner whose heartbeat committed first is re-checked on its new
-- row (FOR UPDATE re-reads it) and left alone; a lost runner's heartbeat finds no row and fences.
-- SKIP LOCKED: a runner row someone holds locked is rescued by a later pass; rescue never waits.
UPDATE {schema}.runners
   SET state = 'lost', stopped_at = clock_timestamp()
 WHERE id IN (SELECT id FROM {schema}.runners
               WHERE state IN ('active', 'draining') AND lease_expires_at < clock_timestamp()
                 FOR UPDATE SKIP LOCKED)
RETURNING NULL::uuid AS id, name AS runner_name, 'runner' AS outcome
