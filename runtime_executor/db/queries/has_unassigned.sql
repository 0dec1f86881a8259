SELECT EXISTS (SELECT 1 FROM {schema}.allocations WHERE state = 'unassigned') AS pending
