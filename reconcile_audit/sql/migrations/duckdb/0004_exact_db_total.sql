-- The database total is kept exactly as the source stores it, at any scale (see the PostgreSQL
-- migration of the same number). DuckDB's DECIMAL holds at most 38 digits, so the exact text is
-- kept instead; CAST it to a DECIMAL of the scale at hand for arithmetic. DuckDB cannot alter a
-- column of an indexed table, hence the index is dropped and made again.
DROP INDEX reconciliation_findings_invoice_run;

ALTER TABLE reconciliation_findings ALTER COLUMN db_total_funded TYPE VARCHAR;

CREATE INDEX reconciliation_findings_invoice_run ON reconciliation_findings (invoice_id, run_id);
