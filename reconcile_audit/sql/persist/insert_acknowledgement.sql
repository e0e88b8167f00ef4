-- One row of the append-only acknowledgements table.
INSERT INTO reconciliation_acknowledgements (
    finding_id, invoice_id, tenant_id, action, evidence, acked_by, acked_at, reason, acked_until
)
VALUES ($1, $2, $3, $4, $5, $6, CAST($7 AS TIMESTAMPTZ), $8, CAST($9 AS TIMESTAMPTZ))
