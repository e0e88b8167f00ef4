-- Every execution of a run key is an attempt with its own row, so a failed or killed rerun can
-- never erase a completed result: reconciliation_runs keeps the key's result (replaced only by a
-- later completed attempt), and this table keeps what each attempt did. `recorded_at` is the
-- server's clock, so a client with a skewed clock cannot reorder the health check's view.
CREATE TABLE reconciliation_attempts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id text NOT NULL UNIQUE,
    run_key text NOT NULL,
    tenant_id text,
    status text NOT NULL CHECK (status IN ('running', 'completed', 'incomplete', 'failed', 'abandoned')),
    started_at timestamptz NOT NULL,
    finished_at timestamptz,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    total bigint NOT NULL DEFAULT 0 CHECK (total >= 0),
    match bigint NOT NULL DEFAULT 0 CHECK (match >= 0),
    mismatch bigint NOT NULL DEFAULT 0 CHECK (mismatch >= 0),
    missing_on_chain bigint NOT NULL DEFAULT 0 CHECK (missing_on_chain >= 0),
    unlinked bigint NOT NULL DEFAULT 0 CHECK (unlinked >= 0),
    error bigint NOT NULL DEFAULT 0 CHECK (error >= 0),
    ledger_min bigint,
    ledger_max bigint,
    error_message text,
    CHECK (total = match + mismatch + missing_on_chain + unlinked + error)
);

CREATE INDEX reconciliation_attempts_tenant_id ON reconciliation_attempts (tenant_id, id DESC);

-- The finished runs stored before attempts existed become one attempt each, so the health
-- check and the mismatch counter read the same history after the upgrade.
INSERT INTO reconciliation_attempts (
    run_id, run_key, tenant_id, status, started_at, finished_at,
    total, match, mismatch, missing_on_chain, unlinked, error, ledger_min, ledger_max, error_message
)
SELECT
    'migrated:' || run_key, run_key, tenant_id, status, started_at, finished_at,
    total, match, mismatch, missing_on_chain, unlinked, error, ledger_min, ledger_max, error_message
FROM reconciliation_runs
WHERE status IN ('completed', 'failed')
ORDER BY started_at, id;
