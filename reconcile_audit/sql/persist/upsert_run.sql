-- One row per run key, the key's result: a later attempt overwrites the row and keeps its id, so
-- the caller can replace that run's findings by run_id. $16 false (a failed attempt) writes the
-- row only when the key has no completed result: a completed run is replaced by a later
-- completed attempt, never by a failure. Returns the row's id when written, nothing otherwise.
-- A shard's row ($17..$19) has its own key, '<run key>#shard-I-of-N'.
INSERT INTO reconciliation_runs (
    run_key, tenant_id, started_at, finished_at, status,
    total, match, mismatch, missing_on_chain, unlinked, error,
    ledger_min, ledger_max, error_message, results,
    shard_of, shard_index, shard_count
)
VALUES (
    $1, CAST($2 AS TEXT), CAST($3 AS TIMESTAMPTZ), CAST($4 AS TIMESTAMPTZ), $5,
    $6, $7, $8, $9, $10, $11,
    CAST($12 AS BIGINT), CAST($13 AS BIGINT), CAST($14 AS TEXT), CAST($15 AS JSON),
    CAST($17 AS TEXT), CAST($18 AS INTEGER), CAST($19 AS INTEGER)
)
ON CONFLICT (run_key) DO UPDATE SET
    tenant_id = excluded.tenant_id,
    started_at = excluded.started_at,
    finished_at = excluded.finished_at,
    status = excluded.status,
    total = excluded.total,
    match = excluded.match,
    mismatch = excluded.mismatch,
    missing_on_chain = excluded.missing_on_chain,
    unlinked = excluded.unlinked,
    error = excluded.error,
    ledger_min = excluded.ledger_min,
    ledger_max = excluded.ledger_max,
    error_message = excluded.error_message,
    results = excluded.results,
    shard_of = excluded.shard_of,
    shard_index = excluded.shard_index,
    shard_count = excluded.shard_count
WHERE CAST($16 AS BOOLEAN) OR reconciliation_runs.status <> 'completed'
RETURNING id
