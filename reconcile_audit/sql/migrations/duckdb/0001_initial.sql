-- reconcile-audit's own tables in an embedded DuckDB file: the PostgreSQL layout with DuckDB
-- types. Applied once, recorded in reconcile_audit_schema_migrations; statements are separated
-- by a line ending in ';'.

CREATE SEQUENCE reconciliation_runs_id_seq;

CREATE TABLE reconciliation_runs (
    id BIGINT PRIMARY KEY DEFAULT nextval('reconciliation_runs_id_seq'),
    run_key VARCHAR NOT NULL UNIQUE,
    tenant_id VARCHAR,
    started_at TIMESTAMPTZ NOT NULL,
    finished_at TIMESTAMPTZ,
    status VARCHAR NOT NULL CHECK (status IN ('running', 'completed', 'failed')),
    total BIGINT NOT NULL DEFAULT 0 CHECK (total >= 0),
    match BIGINT NOT NULL DEFAULT 0 CHECK (match >= 0),
    mismatch BIGINT NOT NULL DEFAULT 0 CHECK (mismatch >= 0),
    missing_on_chain BIGINT NOT NULL DEFAULT 0 CHECK (missing_on_chain >= 0),
    unlinked BIGINT NOT NULL DEFAULT 0 CHECK (unlinked >= 0),
    error BIGINT NOT NULL DEFAULT 0 CHECK (error >= 0),
    ledger_min BIGINT,
    ledger_max BIGINT,
    error_message VARCHAR,
    results JSON,
    CHECK (total = match + mismatch + missing_on_chain + unlinked + error)
);

-- DuckDB has no exact arbitrary-size integer that leaves through Arrow (BIGNUM exports as an
-- opaque blob, HUGEINT cannot hold a delta of two i128), so base units stay exact integer text.
-- No foreign key to reconciliation_runs: DuckDB refuses updates to a referenced row, and the
-- run row is updated when a run key is re-run. persist.py deletes a run's findings itself.
CREATE TABLE reconciliation_findings (
    run_id BIGINT NOT NULL,
    finding_no INTEGER NOT NULL,
    invoice_id VARCHAR,
    tenant_id VARCHAR,
    contract_id VARCHAR,
    class VARCHAR NOT NULL CHECK (class IN ('mismatch', 'missing_on_chain', 'unlinked', 'error')),
    reason_code VARCHAR NOT NULL,
    reason VARCHAR NOT NULL,
    db_funded_base_units VARCHAR CHECK (regexp_full_match(db_funded_base_units, '-?[0-9]+')),
    chain_funded_base_units VARCHAR CHECK (regexp_full_match(chain_funded_base_units, '-?[0-9]+')),
    delta_base_units VARCHAR CHECK (regexp_full_match(delta_base_units, '-?[0-9]+')),
    drift_rank BIGINT,
    token_decimals BIGINT,
    currency VARCHAR,
    db_total_funded DECIMAL(15, 2),
    flags VARCHAR[] NOT NULL DEFAULT [],
    escrow_invoice_id VARCHAR,
    escrow_status BIGINT,
    funding_token VARCHAR,
    address_source VARCHAR,
    latest_ledger BIGINT,
    last_modified_ledger BIGINT,
    live_until_ledger BIGINT,
    PRIMARY KEY (run_id, finding_no)
);

CREATE INDEX reconciliation_findings_invoice_run ON reconciliation_findings (invoice_id, run_id);

CREATE TABLE reconciliation_leases (
    scope VARCHAR PRIMARY KEY,
    tenant_id VARCHAR,
    holder VARCHAR NOT NULL,
    token VARCHAR NOT NULL,
    acquired_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
