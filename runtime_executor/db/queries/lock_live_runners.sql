-- The allocator's placement lock: the live runners it may use, each locked with a transaction-scoped
-- advisory lock keyed from the runner id (taken in id order, so allocators never deadlock). Every
-- assignment happens while holding these locks, so two allocators can never both count the same
-- free capacity.
-- Invariant: placement never locks the runner rows themselves. Heartbeats, rescue and drains
-- update those rows and never take this lock, so a frozen allocator holding it delays no heartbeat
-- (it only makes other allocators' passes wait, up to lock_timeout, and retry).
-- %(queues)s: only runners serving one of these (the queues with pending work), NULL: all. A pass
-- assigns only to runners it locked, so leaving the others out keeps the invariant and spares 200
-- runners' locks and reservations a pass for one queue's task.
WITH live AS (
    SELECT id, queues, slots, cpu, memory_mb
      FROM {schema}.runners
     WHERE state = 'active' AND lease_expires_at > clock_timestamp()
       AND (%(queues)s::text[] IS NULL OR queues && %(queues)s::text[])
     ORDER BY id
)
SELECT l.id, l.queues, l.slots, l.cpu, l.memory_mb
  FROM live AS l
 CROSS JOIN LATERAL (SELECT pg_advisory_xact_lock(hashtextextended('{schema}.placement:' || l.id::text, 0))) AS k
 ORDER BY l.id
