-- The non-match invoices of the previous completed run, each with the start of its current
-- streak: the earliest run of the unbroken series of consecutive earlier runs (ending with the
-- previous one) in which the invoice was a finding. Same parameters $1..$3 as previous_runs.sql.
-- Gaps and islands: numbering an invoice's appearances by run recency, the streak is where the
-- recency equals that number.
WITH runs AS (
    SELECT
        id,
        started_at,
        row_number() OVER (ORDER BY started_at DESC, id DESC) AS recency
    FROM reconciliation_runs
    WHERE status = 'completed'
      AND tenant_id IS NOT DISTINCT FROM CAST($1 AS TEXT)
      AND run_key <> $2
      AND started_at < CAST($3 AS TIMESTAMPTZ)
),
previous AS (
    SELECT invoice_id, tenant_id, contract_id, class, reason_code, reason
    FROM (
        SELECT
            f.invoice_id, f.tenant_id, f.contract_id, f.class, f.reason_code, f.reason,
            row_number() OVER (PARTITION BY f.invoice_id ORDER BY f.finding_no) AS copy
        FROM reconciliation_findings AS f
        JOIN runs AS r ON r.id = f.run_id
        WHERE r.recency = 1 AND f.invoice_id IS NOT NULL
    ) AS numbered
    WHERE copy = 1
),
appearances AS (
    SELECT DISTINCT f.invoice_id, r.recency, r.started_at
    FROM reconciliation_findings AS f
    JOIN runs AS r ON r.id = f.run_id
    WHERE f.invoice_id IN (SELECT invoice_id FROM previous)
),
streaks AS (
    SELECT invoice_id, min(started_at) AS first_seen_at, count(*) AS streak_runs
    FROM (
        SELECT
            invoice_id,
            started_at,
            recency - row_number() OVER (PARTITION BY invoice_id ORDER BY recency) AS gap
        FROM appearances
    ) AS numbered
    WHERE gap = 0
    GROUP BY invoice_id
)
SELECT
    p.invoice_id, p.tenant_id, p.contract_id, p.class, p.reason_code, p.reason,
    s.first_seen_at, s.streak_runs
FROM previous AS p
JOIN streaks AS s ON s.invoice_id = p.invoice_id
ORDER BY p.invoice_id
