-- Mismatches over every finished run of one tenant scope (NULL tenant = the all-tenants run).
-- Failed runs count too: a run whose findings could not be stored is marked failed but keeps
-- its counts, and its mismatches must still reach the monotonic Prometheus counter.
SELECT CAST(COALESCE(SUM(mismatch), 0) AS BIGINT)
FROM reconciliation_runs
WHERE status IN ('completed', 'failed') AND tenant_id IS NOT DISTINCT FROM CAST($1 AS TEXT)
