-- reconcile-audit extract, the database's other sides (issue 11): what escrow_summaries says the
-- escrow paid out and holds, and the ledger it last synced at, from the same latest row the
-- packaged extract takes. Run only when the source has these columns (source_column_type.sql).
-- Runs unchanged on PostgreSQL and DuckDB. $1: tenant id, or NULL for every tenant.
--
-- Columns: invoice_pk, db_total_released and db_available (exact decimal text in major units),
-- db_ledger_sequence.
WITH ranked_summaries AS (
    SELECT
        escrow_summaries.invoice_id AS invoice_id,
        escrow_summaries.total_released AS total_released,
        escrow_summaries.available_amount AS available_amount,
        escrow_summaries.stellar_ledger_sequence AS stellar_ledger_sequence,
        row_number() OVER (
            PARTITION BY escrow_summaries.invoice_id
            ORDER BY escrow_summaries.last_updated_at DESC NULLS LAST, escrow_summaries.id DESC
        ) AS recency
    FROM escrow_summaries
)
SELECT
    CAST(invoices.id AS TEXT) AS invoice_pk,
    CAST(ranked_summaries.total_released AS TEXT) AS db_total_released,
    CAST(ranked_summaries.available_amount AS TEXT) AS db_available,
    CAST(ranked_summaries.stellar_ledger_sequence AS BIGINT) AS db_ledger_sequence
FROM invoices
JOIN ranked_summaries
    ON ranked_summaries.invoice_id = invoices.id AND ranked_summaries.recency = 1
WHERE CAST(invoices.status AS TEXT) IN ('linked_escrow', 'funded', 'partially_funded')
  AND invoices.deleted_at IS NULL
  AND (CAST($1 AS TEXT) IS NULL OR invoices.tenant_id = CAST($1 AS TEXT))
