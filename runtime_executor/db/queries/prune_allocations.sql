-- One batch of the prune (at most %(limit)s rows; the caller runs each batch as its own short
-- transaction and repeats while a batch is full).
-- Invariant: every terminal allocation is pruned once past retention: reported ones (and revoked
-- ones, for which nothing is ever reported: cancelled, or revoked while running and then lost)
-- after `retention`; any other terminal one -- an outcome never reported, e.g. of a scheduler that
-- died and was never adopted -- after the longer `unreported_retention`. Non-terminal rows are never
-- pruned (rescue makes them terminal or gives them back).
-- By ctid, oldest first (allocations_finished): a row updated since the batch was read (an adoption
-- asking for a re-report) has moved and is left for a later batch.
DELETE FROM {schema}.allocations
 WHERE ctid = ANY(ARRAY(
        SELECT ctid FROM {schema}.allocations
         WHERE finished_at < clock_timestamp() - make_interval(secs => %(retention)s)
           AND state IN ('succeeded', 'failed', 'lost', 'cancelled')
           AND (reported_state IS NOT DISTINCT FROM state
                OR cancel_requested OR state = 'cancelled'
                OR finished_at < clock_timestamp() - make_interval(secs => %(unreported_retention)s))
         ORDER BY finished_at
         LIMIT %(limit)s))
