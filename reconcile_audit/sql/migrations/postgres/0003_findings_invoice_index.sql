-- A btree entry holds at most about 2.7 KB, so one hostile 10 KB invoice id made the index, and
-- with it the whole run's findings insert, fail ("index row requires 10160 bytes"). The index
-- keeps serving "which runs found this invoice" through the id's md5, of fixed size; ids are
-- stored whole.
DROP INDEX reconciliation_findings_invoice_run;

CREATE INDEX reconciliation_findings_invoice_run ON reconciliation_findings (md5(invoice_id), run_id);
