-- Every execution of a run key is an attempt with its own row (see the PostgreSQL migration of
-- the same number for why). `recorded_at` is the database's clock at the write.
CREATE SEQUENCE reconciliation_attempts_id_seq;

CREATE TABLE reconciliation_attempts (
    id BIGINT PRIMARY KEY DEFAULT nextval('reconciliation_attempts_id_seq'),
    run_id VARCHAR NOT NULL UNIQUE,
    run_key VARCHAR NOT NULL,
    tenant_id VARCHAR,
    status VARCHAR NOT NULL CHECK (status IN ('running', 'completed', 'incomplete', 'failed', 'abandoned')),
    started_at TIMESTAMPTZ NOT NULL,
    finished_at TIMESTAMPTZ,
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
    total BIGINT NOT NULL DEFAULT 0 CHECK (total >= 0),
    match BIGINT NOT NULL DEFAULT 0 CHECK (match >= 0),
    mismatch BIGINT NOT NULL DEFAULT 0 CHECK (mismatch >= 0),
    missing_on_chain BIGINT NOT NULL DEFAULT 0 CHECK (missing_on_chain >= 0),
    unlinked BIGINT NOT NULL DEFAULT 0 CHECK (unlinked >= 0),
    error BIGINT NOT NULL DEFAULT 0 CHECK (error >= 0),
    ledger_min BIGINT,
    ledger_max BIGINT,
    error_message VARCHAR,
    CHECK (total = match + mismatch + missing_on_chain + unlinked + error)
);

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
