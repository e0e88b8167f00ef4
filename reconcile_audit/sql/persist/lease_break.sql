-- `reconcile-audit unlock`: remove the scope's lease whoever holds it; returns what it held.
DELETE FROM reconciliation_leases WHERE scope = $1
RETURNING holder, token, acquired_at, expires_at
