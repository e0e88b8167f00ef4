-- The source tables reconcile-audit reads, as the backend defines them (docs/domain.md, "Source
-- schema"). Used by the tests and the demo; production databases already have them.
-- Portable DDL: the same statements run on PostgreSQL and DuckDB. Statements are separated by
-- a line holding only ";" because PostgreSQL prepared statements take one command each.
--
-- Differences from production, on purpose:
--   * escrow_summaries.total_funded is nullable (production: NOT NULL DEFAULT 0) so that the
--     extract's NULL-total path can be exercised; the extract treats NULL as 0 either way.
--   * No foreign keys or secondary indexes: loading a million rows stays a bulk copy, and the
--     extract scans whole tables with hash joins, which need neither.
CREATE SEQUENCE IF NOT EXISTS escrow_summaries_id_seq
;
CREATE SEQUENCE IF NOT EXISTS escrow_operations_id_seq
;
CREATE TABLE IF NOT EXISTS invoices (
    id UUID PRIMARY KEY,
    invoice_id TEXT NOT NULL UNIQUE,
    tenant_id TEXT,
    status TEXT NOT NULL,
    amount DECIMAL(15, 2),
    currency TEXT,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP,
    deleted_at TIMESTAMP WITH TIME ZONE
)
;
CREATE TABLE IF NOT EXISTS escrow_summaries (
    id BIGINT PRIMARY KEY DEFAULT nextval('escrow_summaries_id_seq'),
    invoice_id UUID NOT NULL,
    total_funded DECIMAL(15, 2) DEFAULT 0,
    total_released DECIMAL(15, 2),
    available_amount DECIMAL(15, 2),
    stellar_ledger_sequence BIGINT,
    last_updated_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP
)
;
CREATE TABLE IF NOT EXISTS escrow_operations (
    id BIGINT PRIMARY KEY DEFAULT nextval('escrow_operations_id_seq'),
    invoice_id UUID NOT NULL,
    operation_type TEXT NOT NULL,
    contract_id VARCHAR(56),
    status TEXT NOT NULL,
    completed_at TIMESTAMP WITH TIME ZONE,
    stellar_transaction_hash TEXT
)
