-- The newest finished run of one tenant scope (NULL tenant = the all-tenants run).
SELECT
    run_key, tenant_id, started_at, finished_at, status,
    total, match, mismatch, missing_on_chain, unlinked, error,
    ledger_min, ledger_max, error_message
FROM reconciliation_runs
WHERE status IN ('completed', 'failed') AND shard_of IS NULL AND tenant_id IS NOT DISTINCT FROM CAST($1 AS TEXT)
ORDER BY started_at DESC, id DESC
LIMIT 1
