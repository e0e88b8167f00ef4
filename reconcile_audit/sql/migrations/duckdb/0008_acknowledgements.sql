-- A finding's life (see the PostgreSQL migration of the same number). DuckDB has no triggers:
-- the tool itself only ever inserts into the acknowledgements table.
ALTER TABLE reconciliation_findings ADD COLUMN finding_id VARCHAR;

ALTER TABLE reconciliation_findings ADD COLUMN evidence VARCHAR;

ALTER TABLE reconciliation_findings ADD COLUMN finding_state VARCHAR;

ALTER TABLE reconciliation_findings ADD COLUMN first_seen_at TIMESTAMPTZ;

CREATE SEQUENCE reconciliation_acknowledgements_id_seq;

CREATE TABLE reconciliation_acknowledgements (
    id BIGINT PRIMARY KEY DEFAULT nextval('reconciliation_acknowledgements_id_seq'),
    finding_id VARCHAR NOT NULL,
    invoice_id VARCHAR,
    tenant_id VARCHAR,
    action VARCHAR NOT NULL CHECK (action IN ('ack', 'unack')),
    evidence VARCHAR,
    acked_by VARCHAR NOT NULL CHECK (acked_by <> ''),
    acked_at TIMESTAMPTZ NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
    reason VARCHAR NOT NULL CHECK (reason <> ''),
    acked_until TIMESTAMPTZ,
    CHECK ((action = 'ack') = (evidence IS NOT NULL))
);

CREATE INDEX reconciliation_acknowledgements_finding ON reconciliation_acknowledgements (finding_id, acked_at, id);
