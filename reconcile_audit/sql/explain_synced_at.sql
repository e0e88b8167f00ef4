-- reconcile-audit explain: when the database last updated each invoice's escrow summary (the
-- latest row, ranked as extract_invoices.sql ranks them), for the findings whose summary has no
-- stellar_ledger_sequence: their events are those closed after it.
-- $1: the invoices' business ids, as one array parameter. Runs on PostgreSQL and DuckDB.
WITH wanted AS (
    SELECT DISTINCT unnest(CAST($1 AS TEXT[])) AS invoice_id
),
ranked AS (
    SELECT
        CAST(invoices.invoice_id AS TEXT) AS invoice_id,
        escrow_summaries.last_updated_at AS last_updated_at,
        row_number() OVER (
            PARTITION BY escrow_summaries.invoice_id
            ORDER BY escrow_summaries.last_updated_at DESC NULLS LAST, escrow_summaries.id DESC
        ) AS recency
    FROM escrow_summaries
    JOIN invoices ON invoices.id = escrow_summaries.invoice_id
    JOIN wanted ON wanted.invoice_id = CAST(invoices.invoice_id AS TEXT)
)
SELECT invoice_id, last_updated_at
FROM ranked
WHERE recency = 1 AND last_updated_at IS NOT NULL
