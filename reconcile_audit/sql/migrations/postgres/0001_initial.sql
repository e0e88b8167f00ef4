-- reconcile-audit's own tables on PostgreSQL. Applied once, recorded in
-- reconcile_audit_schema_migrations; statements are separated by a line ending in ';'.

-- One row per run key. `results` holds a capped JSON digest of the non-match rows (see
-- persist.RESULTS_JSON_CAP); the complete list is reconciliation_findings.
CREATE TABLE reconciliation_runs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_key text NOT NULL UNIQUE,
    tenant_id text,
    started_at timestamptz NOT NULL,
    finished_at timestamptz,
    status text NOT NULL CHECK (status IN ('running', 'completed', 'failed')),
    total bigint NOT NULL DEFAULT 0 CHECK (total >= 0),
    match bigint NOT NULL DEFAULT 0 CHECK (match >= 0),
    mismatch bigint NOT NULL DEFAULT 0 CHECK (mismatch >= 0),
    missing_on_chain bigint NOT NULL DEFAULT 0 CHECK (missing_on_chain >= 0),
    unlinked bigint NOT NULL DEFAULT 0 CHECK (unlinked >= 0),
    error bigint NOT NULL DEFAULT 0 CHECK (error >= 0),
    ledger_min bigint,
    ledger_max bigint,
    error_message text,
    results jsonb,
    CHECK (total = match + mismatch + missing_on_chain + unlinked + error)
);

-- Health checks and history read the latest runs of one tenant scope.
CREATE INDEX reconciliation_runs_tenant_started ON reconciliation_runs (tenant_id, started_at DESC);

-- One row per non-match invoice per run. Amounts are exact integers in the token's base units;
-- numeric without a precision because 38 token decimals overflow numeric(40,0).
CREATE TABLE reconciliation_findings (
    run_id bigint NOT NULL REFERENCES reconciliation_runs (id) ON DELETE CASCADE,
    finding_no integer NOT NULL,
    invoice_id text,
    tenant_id text,
    contract_id text,
    class text NOT NULL CHECK (class IN ('mismatch', 'missing_on_chain', 'unlinked', 'error')),
    reason_code text NOT NULL,
    reason text NOT NULL,
    db_funded_base_units numeric CHECK (scale(db_funded_base_units) = 0),
    chain_funded_base_units numeric CHECK (scale(chain_funded_base_units) = 0),
    delta_base_units numeric CHECK (scale(delta_base_units) = 0),
    drift_rank bigint,
    token_decimals bigint,
    currency text,
    db_total_funded numeric(15, 2),
    flags text[] NOT NULL DEFAULT '{}',
    escrow_invoice_id text,
    escrow_status bigint,
    funding_token text,
    address_source text,
    latest_ledger bigint,
    last_modified_ledger bigint,
    live_until_ledger bigint,
    PRIMARY KEY (run_id, finding_no)
);

-- History asks "in which runs was this invoice a finding": by invoice, then run.
CREATE INDEX reconciliation_findings_invoice_run ON reconciliation_findings (invoice_id, run_id);

-- One row per tenant scope while a run holds it. `scope` is 'all' or 'tenant:<id>' so that a
-- tenant literally named 'all' cannot collide with the all-tenants run.
CREATE TABLE reconciliation_leases (
    scope text PRIMARY KEY,
    tenant_id text,
    holder text NOT NULL,
    token text NOT NULL,
    acquired_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);
