-- reconcile-audit check: may this role create the tool's tables (migrations are pending)?
SELECT NOT pg_is_in_recovery() AND has_schema_privilege(current_schema(), 'CREATE') AS can_migrate
