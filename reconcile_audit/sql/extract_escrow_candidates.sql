-- reconcile-audit extract, the escrows the ledger stage will read, known early (issue 14): the
-- contract of every completed `create` operation of the scope's invoices, whatever their status,
-- with the invoice's business id for the shard split. This narrow query runs before the full
-- extract so that the ledger sweep reads these escrows while the database works on that one; the
-- ledger stage then reads whatever the extract names beyond them and leaves out the rest (an older
-- `create` of an invoice, say). Runs unchanged on PostgreSQL and DuckDB.
--
-- $1: tenant id, or NULL for every tenant.
SELECT
    CAST(invoices.invoice_id AS TEXT) AS invoice_id,
    CAST(escrow_operations.contract_id AS TEXT) AS contract_id
FROM escrow_operations
JOIN invoices ON invoices.id = escrow_operations.invoice_id
WHERE escrow_operations.operation_type = 'create'
  AND escrow_operations.status = 'completed'
  AND escrow_operations.contract_id IS NOT NULL
  AND (CAST($1 AS TEXT) IS NULL OR invoices.tenant_id = CAST($1 AS TEXT))
