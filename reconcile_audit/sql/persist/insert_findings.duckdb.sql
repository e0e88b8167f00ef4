-- Moves the non-match rows from the registered Arrow table into the findings table in one
-- statement.
INSERT INTO reconciliation_findings (
    run_id, finding_no, invoice_id, tenant_id, contract_id, class, reason_code, reason,
    db_funded_base_units, chain_funded_base_units, delta_base_units, drift_rank,
    token_decimals, currency, db_total_funded, flags, escrow_invoice_id, escrow_status,
    funding_token, address_source, latest_ledger, last_modified_ledger, live_until_ledger
)
SELECT
    $1, finding_no, invoice_id, tenant_id, contract_id, class, reason_code, reason,
    db_funded_base_units, chain_funded_base_units, delta_base_units, drift_rank,
    token_decimals, currency, db_total_funded, COALESCE(flags, []),
    escrow_invoice_id, escrow_status,
    funding_token, address_source, latest_ledger, last_modified_ledger, live_until_ledger
FROM reconcile_findings_staging
