-- Whether one of the tool's tables exists in the current schema: a missing table means the
-- tool never ran here, which is a state, not an error.
SELECT count(*) FROM information_schema.tables
WHERE table_schema = current_schema() AND table_name = $1
