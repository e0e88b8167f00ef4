-- One row per attempt (the runner's run id): the start inserts it as running, the end updates
-- it once. An attempt recorded only at its end (a runner whose kernel never started) is inserted
-- then. An attempt that already ended is not changed again: the runner recording a failure after
-- the notebook stored its result must not turn a completed attempt into a failed one.
-- recorded_at is the database's own clock at every write.
INSERT INTO reconciliation_attempts (
    run_id, run_key, tenant_id, status, started_at, finished_at,
    total, match, mismatch, missing_on_chain, unlinked, error,
    ledger_min, ledger_max, error_message, shard_index, shard_count
)
VALUES (
    $1, $2, CAST($3 AS TEXT), $4, CAST($5 AS TIMESTAMPTZ), CAST($6 AS TIMESTAMPTZ),
    $7, $8, $9, $10, $11, $12,
    CAST($13 AS BIGINT), CAST($14 AS BIGINT), CAST($15 AS TEXT),
    CAST($16 AS INTEGER), CAST($17 AS INTEGER)
)
ON CONFLICT (run_id) DO UPDATE SET
    status = excluded.status,
    finished_at = excluded.finished_at,
    recorded_at = now(),
    total = excluded.total,
    match = excluded.match,
    mismatch = excluded.mismatch,
    missing_on_chain = excluded.missing_on_chain,
    unlinked = excluded.unlinked,
    error = excluded.error,
    ledger_min = excluded.ledger_min,
    ledger_max = excluded.ledger_max,
    error_message = excluded.error_message
WHERE reconciliation_attempts.status = 'running'
