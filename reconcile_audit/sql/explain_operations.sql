-- reconcile-audit explain: the database's own operations on the invoices being explained that
-- carry a Stellar transaction hash, the latest three per invoice (getTransaction checks each).
-- $1: the invoices' business ids, as one array parameter (any count). Runs on PostgreSQL and DuckDB.
WITH wanted AS (
    SELECT DISTINCT unnest(CAST($1 AS TEXT[])) AS invoice_id
),
ranked AS (
    SELECT
        CAST(invoices.invoice_id AS TEXT) AS invoice_id,
        CAST(escrow_operations.id AS TEXT) AS operation_id,
        CAST(escrow_operations.operation_type AS TEXT) AS operation_type,
        CAST(escrow_operations.status AS TEXT) AS status,
        escrow_operations.completed_at AS completed_at,
        lower(CAST(escrow_operations.stellar_transaction_hash AS TEXT)) AS tx_hash,
        row_number() OVER (
            PARTITION BY escrow_operations.invoice_id ORDER BY escrow_operations.id DESC
        ) AS recency
    FROM escrow_operations
    JOIN invoices ON invoices.id = escrow_operations.invoice_id
    JOIN wanted ON wanted.invoice_id = CAST(invoices.invoice_id AS TEXT)
    WHERE escrow_operations.stellar_transaction_hash IS NOT NULL
)
SELECT invoice_id, operation_id, operation_type, status, completed_at, tx_hash
FROM ranked
WHERE recency <= 3
ORDER BY invoice_id, recency
