-- The database total is kept exactly as the source stores it, at any scale: numeric(15,2) would
-- round a sub-cent total (155560.584999) on the way in. An unconstrained numeric keeps every digit.
ALTER TABLE reconciliation_findings ALTER COLUMN db_total_funded TYPE numeric;
