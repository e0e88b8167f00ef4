-- Every acknowledgement row (append-only), oldest first. $1: only rows given before this time.
SELECT id, finding_id, invoice_id, tenant_id, action, evidence, acked_by, acked_at, reason, acked_until
FROM reconciliation_acknowledgements
WHERE acked_at <= CAST($1 AS TIMESTAMPTZ)
ORDER BY acked_at, id
