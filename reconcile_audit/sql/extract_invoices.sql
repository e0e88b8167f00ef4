-- reconcile-audit extract: one row per reconcilable invoice, in one bulk query.
-- Runs unchanged on PostgreSQL and DuckDB. A replacement file (settings.extract_sql_path) must
-- return the same columns, and may use $1 the same way.
--
-- $1: tenant id, or NULL for every tenant.
--
-- Columns (schema INVOICES in reconcile_audit/schemas.py):
--   invoice_pk             invoices.id as text
--   invoice_id             the business id the escrow contract stores
--   tenant_id, status, currency
--   db_total_funded        escrow_summaries.total_funded as exact decimal text in major units, at
--                          whatever scale the column has (never rounded, never through cents);
--                          '0' when there is no summary row or its total is NULL
--   total_was_null         no summary row, or the latest row's total is NULL
--   summary_row_count      summary rows for the invoice; more than 1 is a duplicate
--   op_contract_id         contract_id of the latest escrow_operations row with
--                          operation_type = 'create' and status = 'completed'
--   summary_row_id         escrow_summaries.id of the latest row, by which the packaged extract
--                          joins that row's other sides (extract_summary_sides.sql); a
--                          replacement file may leave it out
--
-- Columns are qualified with full table names (no aliases) so that a schema error names the
-- table: PostgreSQL says "column escrow_summaries.total_funded does not exist".
WITH ranked_summaries AS (
    SELECT
        escrow_summaries.invoice_id AS invoice_id,
        escrow_summaries.id AS summary_row_id,
        escrow_summaries.total_funded AS total_funded,
        -- The latest row wins; equal timestamps fall back to the highest id, so reruns agree.
        row_number() OVER (
            PARTITION BY escrow_summaries.invoice_id
            ORDER BY escrow_summaries.last_updated_at DESC NULLS LAST, escrow_summaries.id DESC
        ) AS recency,
        count(*) OVER (PARTITION BY escrow_summaries.invoice_id) AS row_count
    FROM escrow_summaries
),
latest_create AS (
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
    COALESCE(CAST(ranked_summaries.total_funded AS TEXT), '0') AS db_total_funded,
    ranked_summaries.total_funded IS NULL AS total_was_null,
    COALESCE(ranked_summaries.row_count, 0) AS summary_row_count,
    CAST(latest_create.contract_id AS TEXT) AS op_contract_id,
    CAST(ranked_summaries.summary_row_id AS TEXT) AS summary_row_id
FROM invoices
LEFT JOIN ranked_summaries
    ON ranked_summaries.invoice_id = invoices.id AND ranked_summaries.recency = 1
LEFT JOIN latest_create
    ON latest_create.invoice_id = invoices.id AND latest_create.recency = 1
WHERE CAST(invoices.status AS TEXT) IN ('linked_escrow', 'funded', 'partially_funded')
  AND invoices.deleted_at IS NULL
  AND (CAST($1 AS TEXT) IS NULL OR invoices.tenant_id = CAST($1 AS TEXT))
