-- The rows stored with one run ($1, reconciliation_runs.id) in their order: the findings, the
-- matches with a flag, then the stranded escrows. Exact amounts as text on both dialects.
SELECT
    finding_no, invoice_id, tenant_id, contract_id, class, reason_code, reason,
    CAST(db_funded_base_units AS TEXT) AS db_funded_base_units,
    CAST(chain_funded_base_units AS TEXT) AS chain_funded_base_units,
    CAST(delta_base_units AS TEXT) AS delta_base_units,
    drift_rank, token_decimals, currency,
    CAST(db_total_funded AS TEXT) AS db_total_funded,
    flags, escrow_invoice_id, escrow_status, funding_token, address_source,
    latest_ledger, last_modified_ledger, live_until_ledger,
    CAST(chain_balance_base_units AS TEXT) AS chain_balance_base_units,
    CAST(chain_distributed_base_units AS TEXT) AS chain_distributed_base_units,
    custodial,
    CAST(db_released_base_units AS TEXT) AS db_released_base_units,
    CAST(db_available_base_units AS TEXT) AS db_available_base_units,
    db_ledger_sequence, explanation
FROM reconciliation_findings
WHERE run_id = $1
ORDER BY finding_no
