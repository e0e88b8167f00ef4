-- Why a finding drifted (issue 12): the explain stage's short text, stored with the finding so
-- that the next run can say what explained it the night before. NULL when not explained.
ALTER TABLE reconciliation_findings ADD COLUMN explanation text;
