-- The newest attempt of one tenant scope (NULL tenant = the all-tenants run), and the newest
-- completed one, by the database's order of writes, never by the client's clock.
SELECT
    run_key, run_id, tenant_id, status, started_at, finished_at,
    total, match, mismatch, missing_on_chain, unlinked, error,
    ledger_min, ledger_max, error_message,
    CAST(status = 'completed' AS BOOLEAN) AS is_completed
FROM reconciliation_attempts
WHERE tenant_id IS NOT DISTINCT FROM CAST($1 AS TEXT)
  AND shard_count IS NULL  -- shards are parts of a run: its merge is the attempt that counts
  AND id IN (
      (SELECT max(id) FROM reconciliation_attempts
       WHERE tenant_id IS NOT DISTINCT FROM CAST($1 AS TEXT) AND shard_count IS NULL AND status <> 'running'),
      (SELECT max(id) FROM reconciliation_attempts
       WHERE tenant_id IS NOT DISTINCT FROM CAST($1 AS TEXT) AND shard_count IS NULL AND status = 'completed')
  )
ORDER BY id DESC
