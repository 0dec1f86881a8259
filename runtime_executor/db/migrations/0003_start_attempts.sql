-- rtx schema, version 3: a start that failed before any task code ran is put back for placement
-- (queries/retry_start.sql) up to start_retries times without using an Airflow retry; these count
-- the failed starts and keep each one's reason for the final failure. A constant default: no
-- table rewrite (PostgreSQL 11+).
ALTER TABLE {schema}.allocations
    ADD COLUMN start_attempts integer NOT NULL DEFAULT 0,
    ADD COLUMN start_failures text[] NOT NULL DEFAULT '{}';
