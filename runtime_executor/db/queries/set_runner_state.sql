-- active <-> draining, and -> stopped on a clean exit. Never revives a lost runner.
UPDATE {schema}.runners
   SET state = %(to_state)s,
       stopped_at = CASE WHEN %(to_state)s = 'stopped' THEN clock_timestamp() END
 WHERE id = %(runner_id)s AND state = ANY(%(from_states)s)
RETURNING id
