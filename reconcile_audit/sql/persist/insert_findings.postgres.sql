-- Moves the staged non-match rows (COPY-ingested by ADBC into a temporary table) into the
-- findings table in one statement; amounts go from exact text to numeric (a database total that
-- is not decimal text, an invalid_db_amount finding, is kept in its reason and stored as NULL).
INSERT INTO reconciliation_findings (
    run_id, finding_no, invoice_id, tenant_id, contract_id, class, reason_code, reason,
    db_funded_base_units, chain_funded_base_units, delta_base_units, drift_rank,
    token_decimals, currency, db_total_funded, flags, escrow_invoice_id, escrow_status,
    funding_token, address_source, latest_ledger, last_modified_ledger, live_until_ledger,
    chain_balance_base_units, chain_distributed_base_units, custodial,
    db_released_base_units, db_available_base_units, db_ledger_sequence,
    finding_id, evidence, finding_state, first_seen_at, explanation
)
SELECT
    $1, finding_no, invoice_id, tenant_id, contract_id, class, reason_code, reason,
    CAST(db_funded_base_units AS numeric), CAST(chain_funded_base_units AS numeric),
    CAST(delta_base_units AS numeric), drift_rank,
    token_decimals, currency,
    CASE WHEN db_total_funded ~ '^-?[0-9]+(\.[0-9]+)?$' THEN CAST(db_total_funded AS numeric) END,
    COALESCE(flags, CAST(ARRAY[] AS text[])),
    escrow_invoice_id, escrow_status,
    funding_token, address_source, latest_ledger, last_modified_ledger, live_until_ledger,
    CAST(chain_balance_base_units AS numeric), CAST(chain_distributed_base_units AS numeric), custodial,
    CAST(db_released_base_units AS numeric), CAST(db_available_base_units AS numeric), db_ledger_sequence,
    finding_id, evidence, finding_state, first_seen_at, explanation
FROM reconcile_findings_staging
