DELETE FROM reconciliation_findings WHERE run_id = $1
