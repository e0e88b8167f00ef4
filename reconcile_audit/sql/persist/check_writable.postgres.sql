-- reconcile-audit check: may this role write the tool's tables (already migrated)? A standby in
-- recovery is read-only whatever the grants say.
SELECT
    NOT pg_is_in_recovery()
    AND has_table_privilege('reconciliation_attempts', 'INSERT, UPDATE')
    AND has_table_privilege('reconciliation_runs', 'INSERT, UPDATE')
    AND has_table_privilege('reconciliation_findings', 'INSERT, DELETE')
    AND has_table_privilege('reconciliation_leases', 'INSERT, UPDATE, DELETE')
    AS writable
