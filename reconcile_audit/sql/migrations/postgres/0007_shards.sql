-- Sharded runs (issue 14): `run --shard I/N` stores its result as a row of its own, keyed
-- '<run key>#shard-I-of-N', with `shard_of` naming the run key it is a part of; `merge` then
-- stores the whole key's result as an ordinary row (shard_of NULL). History, health and the
-- mismatch counter read whole runs only. A shard's attempts keep the run key itself.
ALTER TABLE reconciliation_runs ADD COLUMN shard_of text;

ALTER TABLE reconciliation_runs ADD COLUMN shard_index integer;

ALTER TABLE reconciliation_runs ADD COLUMN shard_count integer;

ALTER TABLE reconciliation_runs ADD CONSTRAINT reconciliation_runs_shard_check
    CHECK ((shard_of IS NULL) = (shard_count IS NULL) AND (shard_count IS NULL) = (shard_index IS NULL)
           AND (shard_count IS NULL OR (shard_count >= 1 AND shard_index >= 0 AND shard_index < shard_count)));

CREATE INDEX reconciliation_runs_shard_of ON reconciliation_runs (shard_of) WHERE shard_of IS NOT NULL;

ALTER TABLE reconciliation_attempts ADD COLUMN shard_index integer;

ALTER TABLE reconciliation_attempts ADD COLUMN shard_count integer;

-- Matches that carry a flag (TTL expiring, archived, a balance surplus) are stored too, so that a
-- merge of shards lists them as a single run does. History and the counts read non-match rows.
ALTER TABLE reconciliation_findings DROP CONSTRAINT reconciliation_findings_class_check;

ALTER TABLE reconciliation_findings ADD CONSTRAINT reconciliation_findings_class_check
    CHECK (class IN ('match', 'mismatch', 'missing_on_chain', 'unlinked', 'error', 'stranded'));
