-- The stored results of run key $1's shards for one tenant scope ($2, NULL = all tenants), one
-- row per shard and shard count (a shard's rerun replaces its row), for `reconcile-audit merge`.
-- reconciliation_runs stores an incomplete shard as failed; its error_message says which.
SELECT
    id, run_key, shard_index, shard_count, status, started_at, finished_at,
    total, match, mismatch, missing_on_chain, unlinked, error,
    ledger_min, ledger_max, error_message, CAST(results AS TEXT) AS results
FROM reconciliation_runs
WHERE shard_of = $1
  AND tenant_id IS NOT DISTINCT FROM CAST($2 AS TEXT)
ORDER BY shard_count, shard_index
