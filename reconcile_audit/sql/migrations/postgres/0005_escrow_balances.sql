-- What a custodial escrow holds, beside what it records (issue 11): its token balance, the
-- principal it has paid out, whether it holds tokens at all, and the database's own other sides.
ALTER TABLE reconciliation_findings ADD COLUMN chain_balance_base_units numeric CHECK (scale(chain_balance_base_units) = 0);

ALTER TABLE reconciliation_findings ADD COLUMN chain_distributed_base_units numeric CHECK (scale(chain_distributed_base_units) = 0);

ALTER TABLE reconciliation_findings ADD COLUMN custodial boolean;

ALTER TABLE reconciliation_findings ADD COLUMN db_released_base_units numeric CHECK (scale(db_released_base_units) = 0);

ALTER TABLE reconciliation_findings ADD COLUMN db_available_base_units numeric CHECK (scale(db_available_base_units) = 0);

ALTER TABLE reconciliation_findings ADD COLUMN db_ledger_sequence bigint;
