-- A finding's life (issue 13). Each stored finding carries its stable id, its evidence, the state
-- the run gave it and the start of its open period, so that the health check and `ack` can
-- judge acknowledgements without recomputing anything. Rows stored before this migration have
-- NULL there: the next run compares with them by invoice.
ALTER TABLE reconciliation_findings ADD COLUMN finding_id text;

ALTER TABLE reconciliation_findings ADD COLUMN evidence text;

ALTER TABLE reconciliation_findings ADD COLUMN finding_state text;

ALTER TABLE reconciliation_findings ADD COLUMN first_seen_at timestamptz;

-- Not indexed: finding ids are read per run (by run_id), and a hostile id could outgrow a btree page.

-- Who said what about a finding, and when: append-only. An `unack` row withdraws the `ack`
-- before it; an `ack` lapses by itself when the evidence changes or `acked_until` passes.
CREATE TABLE reconciliation_acknowledgements (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    finding_id text NOT NULL,
    invoice_id text,
    tenant_id text,
    action text NOT NULL CHECK (action IN ('ack', 'unack')),
    evidence text,
    acked_by text NOT NULL CHECK (acked_by <> ''),
    acked_at timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    reason text NOT NULL CHECK (reason <> ''),
    acked_until timestamptz,
    CHECK ((action = 'ack') = (evidence IS NOT NULL))
);

CREATE INDEX reconciliation_acknowledgements_finding ON reconciliation_acknowledgements (md5(finding_id), acked_at, id);

CREATE FUNCTION reconciliation_acknowledgements_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'reconciliation_acknowledgements is append-only: add an unack row instead'; END $$;

CREATE TRIGGER reconciliation_acknowledgements_append_only BEFORE UPDATE OR DELETE ON reconciliation_acknowledgements FOR EACH STATEMENT EXECUTE FUNCTION reconciliation_acknowledgements_append_only();
