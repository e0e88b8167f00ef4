-- Serialises concurrent `migrate` calls for the transaction: CREATE TABLE IF NOT EXISTS alone
-- races on the catalog. The key is an arbitrary constant owned by reconcile-audit.
SELECT pg_advisory_xact_lock(7274386135)
