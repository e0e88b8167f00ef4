-- Every (invoice, class, reason code) that was a finding in an earlier completed whole run of the
-- scope, with the last time it was: a finding that resolved and came back is reopened under the
-- same id. Same parameters $1..$3 as previous_runs.sql.
SELECT f.invoice_id, f.class, f.reason_code, max(r.started_at) AS last_seen_at
FROM reconciliation_findings AS f
JOIN reconciliation_runs AS r ON r.id = f.run_id
WHERE r.status = 'completed'
  AND r.shard_of IS NULL
  AND r.tenant_id IS NOT DISTINCT FROM CAST($1 AS TEXT)
  AND r.run_key <> $2
  AND r.started_at < CAST($3 AS TIMESTAMPTZ)
  AND f.invoice_id IS NOT NULL
  AND f.class NOT IN ('stranded', 'match')
GROUP BY f.invoice_id, f.class, f.reason_code
