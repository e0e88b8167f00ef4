-- The non-match invoices of the previous completed run, each with the start of its current
-- streak: the earliest run of the unbroken series of consecutive earlier runs (ending with the
-- previous one) in which the invoice was a finding. Same parameters $1..$3 as previous_runs.sql.
--
-- Gaps and islands in one pass over the scope's findings (a hash join and one window sort, a
-- plan that stays linear whatever the planner's statistics): numbering an invoice's runs by
-- recency (1 = the previous run), its streak is the runs whose recency equals that number, so
-- only invoices found in the previous run keep any row.
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
appearances AS (
    SELECT
        f.invoice_id, f.tenant_id, f.contract_id, f.class, f.reason_code, f.reason, f.explanation,
        r.recency, r.started_at,
        r.recency - dense_rank() OVER (PARTITION BY f.invoice_id ORDER BY r.recency) AS gap
    FROM reconciliation_findings AS f
    JOIN runs AS r ON r.id = f.run_id
    WHERE f.invoice_id IS NOT NULL
      AND f.class NOT IN ('stranded', 'match')  -- stored beside the findings, never one of them
)
-- An id twice in one run (the source should prevent it) reports the smallest of its values.
SELECT
    invoice_id,
    min(tenant_id) FILTER (WHERE recency = 1) AS tenant_id,
    min(contract_id) FILTER (WHERE recency = 1) AS contract_id,
    min(class) FILTER (WHERE recency = 1) AS class,
    min(reason_code) FILTER (WHERE recency = 1) AS reason_code,
    min(reason) FILTER (WHERE recency = 1) AS reason,
    min(explanation) FILTER (WHERE recency = 1) AS explanation,
    min(started_at) AS first_seen_at,
    count(DISTINCT recency) AS streak_runs
FROM appearances
WHERE gap = 0
GROUP BY invoice_id
ORDER BY invoice_id
