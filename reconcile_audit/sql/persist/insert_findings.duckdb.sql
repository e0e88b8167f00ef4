-- Moves the non-match rows from the registered Arrow table into the findings table in one
-- statement. A database total that is not decimal text (an invalid_db_amount finding) is kept
-- in its reason and stored as NULL, as on PostgreSQL.
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
    db_funded_base_units, chain_funded_base_units, delta_base_units, drift_rank,
    token_decimals, currency,
    CASE WHEN regexp_full_match(db_total_funded, '-?[0-9]+(\.[0-9]+)?') THEN db_total_funded END,
    COALESCE(flags, []),
    escrow_invoice_id, escrow_status,
    funding_token, address_source, latest_ledger, last_modified_ledger, live_until_ledger,
    chain_balance_base_units, chain_distributed_base_units, custodial,
    db_released_base_units, db_available_base_units, db_ledger_sequence,
    finding_id, evidence, finding_state, first_seen_at, explanation
FROM reconcile_findings_staging
