-- reconcile-audit extract, the escrows the ledger stage will read, known early, for a run over
-- every tenant and every shard: the contract of every completed `create` operation. The same
-- escrows extract_escrow_candidates.sql names with no tenant and no shard (an operation's invoice
-- only matters to the tenant filter and the shard split), without its join to invoices: 0.24 s
-- against 0.83 s at 1M invoices, which the sweep waits for. Runs unchanged on PostgreSQL and DuckDB.
SELECT CAST(escrow_operations.contract_id AS TEXT) AS contract_id
FROM escrow_operations
WHERE escrow_operations.operation_type = 'create'
  AND escrow_operations.status = 'completed'
  AND escrow_operations.contract_id IS NOT NULL
