-- The findings of the latest completed whole run of every tenant scope (`scope_tenant_id`, NULL
-- for the all-tenants run): what `ack` acknowledges and what the health check counts.
WITH latest AS (
    SELECT
        id,
        tenant_id,
        started_at,
        row_number() OVER (PARTITION BY tenant_id ORDER BY started_at DESC, id DESC) AS recency
    FROM reconciliation_runs
    WHERE status = 'completed' AND shard_of IS NULL
)
SELECT
    l.tenant_id AS scope_tenant_id,
    l.started_at AS run_started_at,
    f.finding_id, f.invoice_id, f.tenant_id, f.class, f.reason_code, f.reason, f.evidence,
    f.finding_state, f.first_seen_at
FROM reconciliation_findings AS f
JOIN latest AS l ON l.id = f.run_id
WHERE l.recency = 1
  AND f.finding_id IS NOT NULL
  AND f.class NOT IN ('match', 'stranded')
ORDER BY f.finding_id, l.started_at DESC
