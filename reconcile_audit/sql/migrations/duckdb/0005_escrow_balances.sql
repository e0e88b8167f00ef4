-- What a custodial escrow holds (see the PostgreSQL migration of the same number). Exact integer
-- text, as the other base-unit columns here. DuckDB cannot alter a table that has an index on
-- another column, hence the index is dropped and made again.
DROP INDEX reconciliation_findings_invoice_run;

ALTER TABLE reconciliation_findings ADD COLUMN chain_balance_base_units VARCHAR;

ALTER TABLE reconciliation_findings ADD COLUMN chain_distributed_base_units VARCHAR;

ALTER TABLE reconciliation_findings ADD COLUMN custodial BOOLEAN;

ALTER TABLE reconciliation_findings ADD COLUMN db_released_base_units VARCHAR;

ALTER TABLE reconciliation_findings ADD COLUMN db_available_base_units VARCHAR;

ALTER TABLE reconciliation_findings ADD COLUMN db_ledger_sequence BIGINT;

CREATE INDEX reconciliation_findings_invoice_run ON reconciliation_findings (invoice_id, run_id);
