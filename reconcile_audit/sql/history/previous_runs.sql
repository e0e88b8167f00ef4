-- Earlier completed runs of one tenant scope (NULL tenant = the all-tenants run), newest first.
-- $1 tenant, $2 the current run key (excluded: a re-run must not compare with itself),
-- $3 the current run's start, $4 how many.
SELECT
    run_key, started_at, total, match, mismatch, missing_on_chain, unlinked, error
FROM reconciliation_runs
WHERE status = 'completed'
  AND shard_of IS NULL  -- whole runs (a merge of shards is one)
  AND tenant_id IS NOT DISTINCT FROM CAST($1 AS TEXT)
  AND run_key <> $2
  AND started_at < CAST($3 AS TIMESTAMPTZ)
ORDER BY started_at DESC, id DESC
LIMIT $4
