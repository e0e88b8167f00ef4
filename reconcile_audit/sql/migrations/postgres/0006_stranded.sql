-- Stranded escrows (issue 11): escrows of invoices outside the audit that still hold or owe funds
-- are stored beside a run's findings as class 'stranded'. They never count in the run's totals.
ALTER TABLE reconciliation_findings DROP CONSTRAINT reconciliation_findings_class_check;

ALTER TABLE reconciliation_findings ADD CONSTRAINT reconciliation_findings_class_check
    CHECK (class IN ('mismatch', 'missing_on_chain', 'unlinked', 'error', 'stranded'));
