-- rtx schema, version 2: the audit table's prune (queries/prune_events.sql) deletes its oldest
-- rows in batches; this index finds them without a scan of the whole table.
CREATE INDEX allocation_events_at ON {schema}.allocation_events (at);
