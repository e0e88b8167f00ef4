-- reconcile-audit classify: the drift rank of every db_over_chain / chain_over_db row of a run,
-- over every part classify.sql was run on. DuckDB over one registered Arrow frame:
--   drifted  (_pos: the row's position in the findings, abs_delta: |database - chain| as exact
--            integer text in the token's base units, token_decimals)
--
-- Drift in major units, compared exactly: every |delta| is scaled to the largest decimals among
-- the drifted rows by appending zeros, then compared as BIGNUM (1 = largest; ties share a rank).
WITH scale AS (
    SELECT max(token_decimals) AS max_decimals FROM drifted
)
SELECT
    _pos,
    rank() OVER (
        ORDER BY CAST(
            abs_delta || repeat('0', CAST(scale.max_decimals - token_decimals AS INTEGER)) AS BIGNUM
        ) DESC
    ) AS drift_rank
FROM drifted, scale
