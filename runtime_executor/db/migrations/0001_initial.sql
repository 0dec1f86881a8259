-- rtx schema, version 1. "{schema}" is replaced by the validated, quoted schema name.
--
-- Allocation life cycle: docs/reliability.md, "Allocation life cycle" (the one description;
-- every change is one guarded statement in db/queries).

CREATE TABLE {schema}.runners (
    id                uuid PRIMARY KEY,
    name              text NOT NULL,
    hostname          text NOT NULL,
    pid               integer NOT NULL,
    queues            text[] NOT NULL,
    slots             integer NOT NULL CHECK (slots > 0),
    cpu               double precision NOT NULL CHECK (cpu >= 0),
    memory_mb         bigint NOT NULL CHECK (memory_mb >= 0),
    state             text NOT NULL DEFAULT 'active'
                      CHECK (state IN ('active', 'draining', 'stopped', 'lost')),
    version           text NOT NULL DEFAULT '',
    started_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    heartbeat_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    lease_expires_at  timestamptz NOT NULL,
    stopped_at        timestamptz,
    host_cpu_percent  double precision,
    host_memory_used_mb bigint
);
CREATE INDEX runners_live ON {schema}.runners (lease_expires_at) WHERE state IN ('active', 'draining');

CREATE TABLE {schema}.allocations (
    id                uuid PRIMARY KEY,
    kind              text NOT NULL DEFAULT 'task' CHECK (kind IN ('task', 'callback')),
    dag_id            text,
    task_id           text,
    run_id            text,
    map_index         integer,
    try_number        integer,
    callback_id       text,
    queue             text NOT NULL,
    priority_weight   integer NOT NULL DEFAULT 1,
    slots             integer NOT NULL CHECK (slots BETWEEN 1 AND 64),
    cpu               double precision NOT NULL CHECK (cpu >= 0),
    memory_mb         bigint NOT NULL CHECK (memory_mb >= 0),
    state             text NOT NULL DEFAULT 'unassigned'
                      CHECK (state IN ('unassigned', 'assigned', 'running', 'succeeded', 'failed',
                                       'cancelled', 'lost')),
    runner_id         uuid,               -- no foreign key: assignments come from locked runner rows, and
                                          -- a per-row FK check would cost ~10% of a placement pass
    workload          text,               -- the Airflow workload JSON (holds the token); cleared when terminal
    scheduler_job_id  integer,            -- the scheduler job whose executor reports this allocation
    reported_state    text,               -- the last state the executor reported to the scheduler
    cancel_requested  boolean NOT NULL DEFAULT false,
    unschedulable_reason text,
    unschedulable_since  timestamptz,
    created_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    assigned_at       timestamptz,
    started_at        timestamptz,
    finished_at       timestamptz,
    pid               integer,
    process_started_at timestamptz,       -- when the task process existed (pickup latency ends here)
    exit_code         integer,
    reason            text,
    cpu_percent       double precision,
    rss_mb            bigint,
    peak_rss_mb       bigint
);
CREATE INDEX allocations_pending ON {schema}.allocations (queue, priority_weight DESC, created_at, id)
    WHERE state = 'unassigned';
CREATE INDEX allocations_on_runner ON {schema}.allocations (runner_id, state)
    WHERE state IN ('assigned', 'running');
CREATE INDEX allocations_unreported ON {schema}.allocations (scheduler_job_id)
    WHERE reported_state IS DISTINCT FROM state;
CREATE INDEX allocations_finished ON {schema}.allocations (finished_at)
    WHERE finished_at IS NOT NULL;

-- Every state change of an allocation, for audits and tests (who moved what, when, to which runner).
CREATE TABLE {schema}.allocation_events (
    id             bigserial PRIMARY KEY,
    allocation_id  uuid NOT NULL,
    runner_id      uuid,
    from_state     text,
    to_state       text NOT NULL,
    at             timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX allocation_events_allocation ON {schema}.allocation_events (allocation_id);

-- Wake-ups. Channels are "<schema>.allocator" (work or capacity for the allocator) and
-- "<schema>.runner" with the runner id as payload (work, a cancel or a state change for that runner).
-- NOTIFY is delivered at commit and deduplicated per transaction, so a batch of assignments wakes
-- each runner once.
-- Trigger functions run as the schema owner (SECURITY DEFINER, fixed search_path), so the
-- least-privilege roles of `rtx db grant` need no rights on allocation_events.
-- Statement-level triggers with transition tables: one audit INSERT and one NOTIFY per runner for
-- a whole batch, instead of per-row work (a placement pass assigns thousands of rows at once).
CREATE FUNCTION {schema}.on_allocations_inserted() RETURNS trigger LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO {schema}.allocation_events (allocation_id, runner_id, from_state, to_state)
         SELECT n.id, n.runner_id, NULL, n.state FROM new_rows AS n;
    PERFORM pg_notify(TG_TABLE_SCHEMA || '.allocator', '');
    RETURN NULL;
END $$;
CREATE TRIGGER allocations_inserted AFTER INSERT ON {schema}.allocations
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.on_allocations_inserted();

CREATE FUNCTION {schema}.on_allocations_updated() RETURNS trigger LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO {schema}.allocation_events (allocation_id, runner_id, from_state, to_state)
         SELECT n.id, coalesce(n.runner_id, o.runner_id), o.state, n.state
           FROM new_rows AS n JOIN old_rows AS o USING (id)
          WHERE n.state IS DISTINCT FROM o.state;
    -- wake each runner that got work or a cancel
    PERFORM pg_notify(TG_TABLE_SCHEMA || '.runner', r.runner_id::text)
       FROM (SELECT DISTINCT n.runner_id
               FROM new_rows AS n JOIN old_rows AS o USING (id)
              WHERE n.runner_id IS NOT NULL
                AND ((n.state = 'assigned' AND o.state IS DISTINCT FROM 'assigned')
                     OR (n.cancel_requested AND NOT o.cancel_requested))) AS r;
    -- wake the allocator when work came back or capacity was freed
    IF EXISTS (SELECT 1 FROM new_rows AS n JOIN old_rows AS o USING (id)
                WHERE (n.state = 'unassigned' AND o.state <> 'unassigned')
                   OR (o.state IN ('assigned', 'running') AND n.state NOT IN ('assigned', 'running'))) THEN
        PERFORM pg_notify(TG_TABLE_SCHEMA || '.allocator', '');
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER allocations_updated AFTER UPDATE ON {schema}.allocations
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.on_allocations_updated();

CREATE FUNCTION {schema}.on_runner_change() RETURNS trigger LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.state IS DISTINCT FROM OLD.state THEN
        PERFORM pg_notify(TG_TABLE_SCHEMA || '.allocator', '');
        IF TG_OP = 'UPDATE' THEN
            PERFORM pg_notify(TG_TABLE_SCHEMA || '.runner', NEW.id::text);
        END IF;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER runner_changed AFTER INSERT OR UPDATE OF state ON {schema}.runners
    FOR EACH ROW EXECUTE FUNCTION {schema}.on_runner_change();
