-- reconcile-audit extract, the database's other sides (issue 11): what escrow_summaries says the
-- escrow paid out and holds, and the ledger it last synced at. Run only when the source has these
-- columns (source_column_type.sql). Every summary row of the scope, unranked: the packaged extract
-- joins them to the latest row it took, by summary_row_id, instead of ranking the rows twice.
-- Runs unchanged on PostgreSQL and DuckDB. $1: tenant id, or NULL for every tenant.
--
-- Columns: summary_row_id, db_total_released and db_available (exact decimal text in major
-- units), db_ledger_sequence.
SELECT
    CAST(escrow_summaries.id AS TEXT) AS summary_row_id,
    CAST(escrow_summaries.total_released AS TEXT) AS db_total_released,
    CAST(escrow_summaries.available_amount AS TEXT) AS db_available,
    CAST(escrow_summaries.stellar_ledger_sequence AS BIGINT) AS db_ledger_sequence
FROM escrow_summaries
JOIN invoices ON invoices.id = escrow_summaries.invoice_id
WHERE CAST(invoices.status AS TEXT) IN ('linked_escrow', 'funded', 'partially_funded')
  AND invoices.deleted_at IS NULL
  AND (CAST($1 AS TEXT) IS NULL OR invoices.tenant_id = CAST($1 AS TEXT))
