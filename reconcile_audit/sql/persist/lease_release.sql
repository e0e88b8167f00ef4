-- Only the acquisition that owns the token releases: after an expiry takeover, the old holder
-- must not delete its successor's lease.
DELETE FROM reconciliation_leases WHERE scope = $1 AND token = $2 RETURNING token
