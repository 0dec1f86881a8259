-- rtx schema, version 4: a NOTIFY channel per runner, and fewer NOTIFYs for the allocators.
--
-- Before, every runner LISTENed on the one "<schema>.runner" channel and kept the NOTIFYs whose
-- payload was its id: each assignment was delivered to every runner (202 deliveries per task with
-- 200 runners), and each of them woke up to drop it. Now each runner LISTENs on its own channel,
-- runner_channel(schema, id), and a NOTIFY reaches only the runner it is for. (PostgreSQL 15 still signals
-- every listening backend of the database at each commit that notified; what is saved is the
-- delivery to, and wake-up of, every other runner process.)
--
-- And a finish wakes the allocators only while work waits (before: every finish). Every NOTIFY-ing
-- commit signals every listening backend of the database, 200 of them with 200 runners, so each one
-- left out is 200 wake-ups saved. The check reads committed rows at the finish; a row committed
-- between that check and the finish's commit is placed by the pass its own insert's NOTIFY starts,
-- or, if that pass ran before the finish committed and found no room, by the allocator's next poll
-- (allocator_poll_interval).
--
-- The name: "<schema>.runner.<id>" when that fits in an identifier (63 bytes: schemas of up to 19
-- characters), else "rtx.runner." and the md5 of "<schema>.<id>". runtime_executor.db.channels.runner_channel
-- computes the same name in Python (tests/integration/test_runner_channels.py compares the two).
CREATE FUNCTION {schema}.runner_channel(schema_name text, runner_id uuid) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN octet_length(schema_name || '.runner.' || runner_id::text) <= 63
                THEN schema_name || '.runner.' || runner_id::text
                ELSE 'rtx.runner.' || md5(schema_name || '.' || runner_id::text) END
$$;

CREATE OR REPLACE FUNCTION {schema}.on_allocations_updated() RETURNS trigger LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO {schema}.allocation_events (allocation_id, runner_id, from_state, to_state)
         SELECT n.id, coalesce(n.runner_id, o.runner_id), o.state, n.state
           FROM new_rows AS n JOIN old_rows AS o USING (id)
          WHERE n.state IS DISTINCT FROM o.state;
    -- wake each runner that got work or a cancel, on its own channel
    PERFORM pg_notify({schema}.runner_channel(TG_TABLE_SCHEMA, r.runner_id), '')
       FROM (SELECT DISTINCT n.runner_id
               FROM new_rows AS n JOIN old_rows AS o USING (id)
              WHERE n.runner_id IS NOT NULL
                AND ((n.state = 'assigned' AND o.state IS DISTINCT FROM 'assigned')
                     OR (n.cancel_requested AND NOT o.cancel_requested))) AS r;
    -- wake the allocator when work came back, or when capacity was freed and work waits for it
    IF EXISTS (SELECT 1 FROM new_rows AS n JOIN old_rows AS o USING (id)
                WHERE n.state = 'unassigned' AND o.state <> 'unassigned')
       OR (EXISTS (SELECT 1 FROM new_rows AS n JOIN old_rows AS o USING (id)
                    WHERE o.state IN ('assigned', 'running') AND n.state NOT IN ('assigned', 'running'))
           AND EXISTS (SELECT 1 FROM {schema}.allocations WHERE state = 'unassigned')) THEN
        PERFORM pg_notify(TG_TABLE_SCHEMA || '.allocator', '');
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION {schema}.on_runner_change() RETURNS trigger LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.state IS DISTINCT FROM OLD.state THEN
        PERFORM pg_notify(TG_TABLE_SCHEMA || '.allocator', '');
        IF TG_OP = 'UPDATE' THEN
            PERFORM pg_notify({schema}.runner_channel(TG_TABLE_SCHEMA, NEW.id), '');  -- drain/resume/lost: that runner
        END IF;
    END IF;
    RETURN NULL;
END $$;
