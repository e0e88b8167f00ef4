SELECT holder, token, acquired_at, expires_at FROM reconciliation_leases WHERE scope = $1
