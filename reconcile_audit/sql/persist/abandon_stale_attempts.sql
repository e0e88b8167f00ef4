-- Attempts of one tenant scope still marked running when a new run holds the lease: whoever ran
-- them is gone (the lease is one run at a time), so they are abandoned, not left running forever.
-- A shard's lease is its own: $3/$4 name the shard (NULL for a whole run).
UPDATE reconciliation_attempts
SET status = 'abandoned',
    finished_at = now(),
    recorded_at = now(),
    error_message = 'abandoned: the run stopped before it recorded an end (killed, or its host died)'
WHERE status = 'running'
  AND tenant_id IS NOT DISTINCT FROM CAST($1 AS TEXT)
  AND run_id <> $2
  AND shard_index IS NOT DISTINCT FROM CAST($3 AS INTEGER)  -- the lease is per shard
  AND shard_count IS NOT DISTINCT FROM CAST($4 AS INTEGER)
RETURNING run_id
