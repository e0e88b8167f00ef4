-- reconcile-audit classify: macros classify.sql uses, created on its own DuckDB connection.
--
-- base_units(text, decimals): exact decimal text in major units (a database amount, at whatever
-- scale its column has) as BIGNUM base units of a token with ``decimals``, or NULL when the text
-- is no decimal number or has more non-zero decimal places than the token (it cannot exist on
-- chain). Built as digits, never through a float.
CREATE OR REPLACE MACRO base_units(amount_text, decimals) AS
    CASE
        WHEN regexp_full_match(amount_text, '-?[0-9]{1,60}(\.[0-9]{1,60})?')
            AND decimals BETWEEN 0 AND 38
            AND length(rtrim(split_part(amount_text, '.', 2), '0')) <= decimals
            THEN CAST(
                split_part(amount_text, '.', 1)
                || rpad(rtrim(split_part(amount_text, '.', 2), '0'), CAST(decimals AS INTEGER), '0')
                AS BIGNUM
            )
    END;

-- i128(text): exact i128 integer text as BIGNUM, NULL for anything else. TRY_CAST alone would
-- round '1.5' to 2.
CREATE OR REPLACE MACRO i128(amount_text) AS
    CASE
        WHEN regexp_full_match(amount_text, '-?[0-9]{1,39}') THEN CAST(TRY_CAST(amount_text AS HUGEINT) AS BIGNUM)
    END;
