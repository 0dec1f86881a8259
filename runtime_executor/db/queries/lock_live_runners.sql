-- The allocator's capacity lock. Every assignment happens while holding the row locks of the live
-- runners it may use (taken in id order, so allocators never deadlock), so two allocators can never
-- both count the same free capacity.
SELECT id, queues, slots, cpu, memory_mb
  FROM {schema}.runners
 WHERE state = 'active' AND lease_expires_at > clock_timestamp()
 ORDER BY id
   FOR UPDATE
