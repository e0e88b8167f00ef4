-- The ledger of applied migrations; the only table created outside a numbered migration.
CREATE TABLE IF NOT EXISTS reconcile_audit_schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL
)
