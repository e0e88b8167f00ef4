-- Every completed whole run in which an invoice had a finding (the analyst's drill-down), oldest
-- first, with what the run stored about it. $1: the invoice id.
SELECT
    r.run_key, r.tenant_id AS scope_tenant_id, r.started_at,
    f.invoice_id, f.finding_id, f.class, f.reason_code, f.reason, f.evidence, f.finding_state, f.first_seen_at
FROM reconciliation_findings AS f
JOIN reconciliation_runs AS r ON r.id = f.run_id
WHERE f.invoice_id = $1
  AND r.status = 'completed'
  AND r.shard_of IS NULL
  AND f.class NOT IN ('match', 'stranded')
ORDER BY r.started_at, r.id
