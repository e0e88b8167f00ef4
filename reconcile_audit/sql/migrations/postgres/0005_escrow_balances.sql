-- What a custodial escrow holds, beside what it records (issue 11): its token balance, the
-- principal it has paid out, and whether it holds tokens at all.
ALTER TABLE reconciliation_findings ADD COLUMN chain_balance_base_units numeric CHECK (scale(chain_balance_base_units) = 0);

ALTER TABLE reconciliation_findings ADD COLUMN chain_distributed_base_units numeric CHECK (scale(chain_distributed_base_units) = 0);

ALTER TABLE reconciliation_findings ADD COLUMN custodial boolean;
