-- reconcile-audit extract, the invoices outside the audit (issue 11): soft-deleted, or in a status
-- outside the reconcilable set, yet with a completed `create` operation, so an escrow exists that
-- may still hold money. Their escrows are read in the same sweep; those still holding funds are
-- reported as stranded, apart from the five classes. Runs unchanged on PostgreSQL and DuckDB.
-- The reconcilable set is the one extract_invoices.sql audits: keep the two lists equal.
--
-- $1: tenant id, or NULL for every tenant.
--
-- Columns (schema OUT_OF_SCOPE in reconcile_audit/compute/schemas.py): invoice_pk, invoice_id,
-- tenant_id, status, currency, deleted_at (text, NULL when not deleted), op_contract_id.
WITH latest_create AS (
    SELECT
        escrow_operations.invoice_id AS invoice_id,
        escrow_operations.contract_id AS contract_id,
        row_number() OVER (
            PARTITION BY escrow_operations.invoice_id
            ORDER BY escrow_operations.completed_at DESC NULLS LAST, escrow_operations.id DESC
        ) AS recency
    FROM escrow_operations
    WHERE escrow_operations.operation_type = 'create'
      AND escrow_operations.status = 'completed'
)
SELECT
    CAST(invoices.id AS TEXT) AS invoice_pk,
    CAST(invoices.invoice_id AS TEXT) AS invoice_id,
    CAST(invoices.tenant_id AS TEXT) AS tenant_id,
    CAST(invoices.status AS TEXT) AS status,
    CAST(invoices.currency AS TEXT) AS currency,
    CAST(invoices.deleted_at AS TEXT) AS deleted_at,
    CAST(latest_create.contract_id AS TEXT) AS op_contract_id
FROM invoices
JOIN latest_create
    ON latest_create.invoice_id = invoices.id AND latest_create.recency = 1
WHERE (
        CAST(invoices.status AS TEXT) NOT IN ('linked_escrow', 'funded', 'partially_funded')
        OR invoices.status IS NULL
        OR invoices.deleted_at IS NOT NULL
    )
  AND (CAST($1 AS TEXT) IS NULL OR invoices.tenant_id = CAST($1 AS TEXT))
ORDER BY invoices.invoice_id, invoices.id
