-- The monotonic counter's value for one tenant scope (NULL tenant = the all-tenants run): per
-- run key, the most mismatches any finished attempt of it counted, summed over the keys. A rerun
-- of a key counts once, and no later attempt (failed, or finding fewer) can lower the sum.
-- Failed and incomplete attempts count too: one whose findings could not be stored keeps its
-- counts, and the mismatches an incomplete sweep did find are real.
SELECT CAST(COALESCE(SUM(most), 0) AS BIGINT)
FROM (
    SELECT max(mismatch) AS most
    FROM reconciliation_attempts
    WHERE status IN ('completed', 'incomplete', 'failed') AND tenant_id IS NOT DISTINCT FROM CAST($1 AS TEXT)
      AND shard_count IS NULL  -- a merge counts its shards' mismatches once
    GROUP BY run_key
) AS per_key
