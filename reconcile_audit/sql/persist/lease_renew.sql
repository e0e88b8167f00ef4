-- The holder's heartbeat: push the expiry out while the run is alive. Returns no row when the
-- lease is no longer this holder's (it expired and was taken over, or was broken by `unlock`).
UPDATE reconciliation_leases SET expires_at = CAST($3 AS TIMESTAMPTZ)
WHERE scope = $1 AND token = $2
RETURNING token
