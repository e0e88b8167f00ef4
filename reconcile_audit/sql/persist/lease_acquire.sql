-- Takes the scope's lease when it is free, expired, or held under token $7 (a holder found dead:
-- its process is gone from this host); returns no row when a live lease is held.
-- ON CONFLICT makes the check and the write one atomic step on PostgreSQL; DuckDB files have a
-- single writer process anyway.
INSERT INTO reconciliation_leases (scope, tenant_id, holder, token, acquired_at, expires_at)
VALUES ($1, CAST($2 AS TEXT), $3, $4, CAST($5 AS TIMESTAMPTZ), CAST($6 AS TIMESTAMPTZ))
ON CONFLICT (scope) DO UPDATE SET
    tenant_id = excluded.tenant_id,
    holder = excluded.holder,
    token = excluded.token,
    acquired_at = excluded.acquired_at,
    expires_at = excluded.expires_at
WHERE reconciliation_leases.expires_at <= excluded.acquired_at OR reconciliation_leases.token = $7
RETURNING token
