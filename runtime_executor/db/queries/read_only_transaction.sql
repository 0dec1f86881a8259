-- The status page's read: this transaction writes nothing and no statement in it runs longer than
-- %(statement_timeout)s ms (both end with the transaction).
SELECT set_config('transaction_read_only', 'on', true), set_config('statement_timeout', %(statement_timeout)s, true)
