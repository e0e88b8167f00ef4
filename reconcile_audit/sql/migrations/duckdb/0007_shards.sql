-- Sharded runs and flagged matches (see the PostgreSQL migration of the same number). DuckDB
-- cannot alter a CHECK constraint, so the findings table is made again with the wider one, as
-- migrations 0001 to 0006 left it, and its rows copied over.
ALTER TABLE reconciliation_runs ADD COLUMN shard_of VARCHAR;

ALTER TABLE reconciliation_runs ADD COLUMN shard_index INTEGER;

ALTER TABLE reconciliation_runs ADD COLUMN shard_count INTEGER;

ALTER TABLE reconciliation_attempts ADD COLUMN shard_index INTEGER;

ALTER TABLE reconciliation_attempts ADD COLUMN shard_count INTEGER;

DROP INDEX reconciliation_findings_invoice_run;

ALTER TABLE reconciliation_findings RENAME TO reconciliation_findings_0006;

CREATE TABLE reconciliation_findings (
    run_id BIGINT NOT NULL,
    finding_no INTEGER NOT NULL,
    invoice_id VARCHAR,
    tenant_id VARCHAR,
    contract_id VARCHAR,
    class VARCHAR NOT NULL CHECK (class IN ('match', 'mismatch', 'missing_on_chain', 'unlinked', 'error', 'stranded')),
    reason_code VARCHAR NOT NULL,
    reason VARCHAR NOT NULL,
    db_funded_base_units VARCHAR CHECK (regexp_full_match(db_funded_base_units, '-?[0-9]+')),
    chain_funded_base_units VARCHAR CHECK (regexp_full_match(chain_funded_base_units, '-?[0-9]+')),
    delta_base_units VARCHAR CHECK (regexp_full_match(delta_base_units, '-?[0-9]+')),
    drift_rank BIGINT,
    token_decimals BIGINT,
    currency VARCHAR,
    db_total_funded VARCHAR,
    flags VARCHAR[] NOT NULL DEFAULT [],
    escrow_invoice_id VARCHAR,
    escrow_status BIGINT,
    funding_token VARCHAR,
    address_source VARCHAR,
    latest_ledger BIGINT,
    last_modified_ledger BIGINT,
    live_until_ledger BIGINT,
    chain_balance_base_units VARCHAR,
    chain_distributed_base_units VARCHAR,
    custodial BOOLEAN,
    db_released_base_units VARCHAR,
    db_available_base_units VARCHAR,
    db_ledger_sequence BIGINT,
    PRIMARY KEY (run_id, finding_no)
);

INSERT INTO reconciliation_findings SELECT * FROM reconciliation_findings_0006;

DROP TABLE reconciliation_findings_0006;

CREATE INDEX reconciliation_findings_invoice_run ON reconciliation_findings (invoice_id, run_id);
