-- Every appearance, in the scope's earlier completed whole runs, of the invoices that were findings
-- in the previous one (recency 1), with the run's recency: the streak of each finding id (computed
-- from class and reason code in Python, where the reason families live) and of each invoice is
-- its unbroken run of recencies 1, 2, 3... The previous run's rows also carry what history reports
-- of them (tenant, contract, reason, explanation); older rows need only their identity.
-- Same parameters $1..$3 as previous_runs.sql.
WITH runs AS (
    SELECT
        id,
        started_at,
        row_number() OVER (ORDER BY started_at DESC, id DESC) AS recency
    FROM reconciliation_runs
    WHERE status = 'completed'
      AND shard_of IS NULL
      AND tenant_id IS NOT DISTINCT FROM CAST($1 AS TEXT)
      AND run_key <> $2
      AND started_at < CAST($3 AS TIMESTAMPTZ)
),
previous AS (
    SELECT DISTINCT f.invoice_id
    FROM reconciliation_findings AS f
    JOIN runs AS r ON r.id = f.run_id
    WHERE r.recency = 1 AND f.invoice_id IS NOT NULL AND f.class NOT IN ('stranded', 'match')
)
SELECT
    f.invoice_id, f.class, f.reason_code, r.recency, r.started_at,
    CASE WHEN r.recency = 1 THEN f.tenant_id END AS tenant_id,
    CASE WHEN r.recency = 1 THEN f.contract_id END AS contract_id,
    CASE WHEN r.recency = 1 THEN f.reason END AS reason,
    CASE WHEN r.recency = 1 THEN f.explanation END AS explanation
FROM reconciliation_findings AS f
JOIN runs AS r ON r.id = f.run_id
JOIN previous AS p ON p.invoice_id = f.invoice_id
WHERE f.class NOT IN ('stranded', 'match')
