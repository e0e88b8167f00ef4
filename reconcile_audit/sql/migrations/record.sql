INSERT INTO reconcile_audit_schema_migrations (version, name, applied_at)
VALUES ($1, $2, CAST($3 AS TIMESTAMPTZ))
