-- One page of the seed PR's keyset scan (src/jobs/reconcileEscrow.js, iterateInvoicesFromDb),
-- re-created for benchmarks/extract_bench.py: invoices ordered by id, filtered to the
-- reconcilable states, left-joined to escrow_summaries for the DB fundedTotal.
--
-- $1: the last invoices.id of the previous page (the nil UUID for the first page)
-- $2: page size (the seed clamps it to at most 1000)
--
-- escrow_summaries has no index on invoice_id, so every page joins against the whole table:
-- the scan re-walks escrow_summaries once per page. A duplicate summary row yields a second row
-- for its invoice, which the seed counted twice.
SELECT invoices.id, invoices.invoice_id, escrow_summaries.total_funded
FROM invoices
LEFT JOIN escrow_summaries ON escrow_summaries.invoice_id = invoices.id
WHERE invoices.status IN ('linked_escrow', 'funded', 'partially_funded')
  AND invoices.deleted_at IS NULL
  AND invoices.id > $1
ORDER BY invoices.id
LIMIT $2
