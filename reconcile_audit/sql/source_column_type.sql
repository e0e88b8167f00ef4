-- reconcile-audit: the declared type of one source column, checked before the packaged extract so
-- that a column of the wrong type is named with its type, not reported as an operator error.
-- Runs unchanged on PostgreSQL ('numeric', 'text', ...) and DuckDB ('DECIMAL(20,6)', 'VARCHAR', ...).
--
-- $1: table name.   $2: column name.
SELECT CAST(columns.data_type AS TEXT) AS data_type
FROM information_schema.columns AS columns
WHERE columns.table_schema = current_schema()
  AND columns.table_name = CAST($1 AS TEXT)
  AND columns.column_name = CAST($2 AS TEXT)
