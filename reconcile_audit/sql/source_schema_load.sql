-- Bulk load of the source tables from staging tables holding the caller's frames
-- (reconcile_audit.face.demo.sourcedb.load_source_rows). The staging tables carry text and typed
-- timestamps; the casts here give every dialect the same column types. Omitted ids take the
-- sequence default. Statements are separated by a line holding only ";".
-- name: invoices
INSERT INTO invoices (id, invoice_id, tenant_id, status, amount, currency, deleted_at)
SELECT
    CAST(stage_invoices.id AS UUID),
    stage_invoices.invoice_id,
    stage_invoices.tenant_id,
    stage_invoices.status,
    CAST(stage_invoices.amount AS DECIMAL(15, 2)),
    stage_invoices.currency,
    CAST(stage_invoices.deleted_at AS TIMESTAMP WITH TIME ZONE)
FROM stage_invoices
;
-- name: escrow_summaries
INSERT INTO escrow_summaries (
    invoice_id, total_funded, total_released, available_amount, stellar_ledger_sequence, last_updated_at
)
SELECT
    CAST(stage_escrow_summaries.invoice_id AS UUID),
    CAST(stage_escrow_summaries.total_funded AS DECIMAL(15, 2)),
    CAST(stage_escrow_summaries.total_released AS DECIMAL(15, 2)),
    CAST(stage_escrow_summaries.available_amount AS DECIMAL(15, 2)),
    CAST(stage_escrow_summaries.stellar_ledger_sequence AS BIGINT),
    CAST(stage_escrow_summaries.last_updated_at AS TIMESTAMP WITH TIME ZONE)
FROM stage_escrow_summaries
;
-- name: escrow_operations
INSERT INTO escrow_operations (invoice_id, operation_type, contract_id, status, completed_at, stellar_transaction_hash)
SELECT
    CAST(stage_escrow_operations.invoice_id AS UUID),
    stage_escrow_operations.operation_type,
    stage_escrow_operations.contract_id,
    stage_escrow_operations.status,
    CAST(stage_escrow_operations.completed_at AS TIMESTAMP WITH TIME ZONE),
    stage_escrow_operations.stellar_transaction_hash
FROM stage_escrow_operations
