SELECT id, name, state FROM {schema}.runners
 WHERE (id::text = %(ref)s OR name = %(ref)s) AND state IN ('active', 'draining')
