-- reconcile-audit classify: one findings row per resolved invoice (reconcile_audit.compute.classify).
-- DuckDB over two registered Arrow frames, with the macros of classify_macros.sql:
--   resolved_input  RESOLVED plus _row (input order) and address_conflict
--   ledger_input    LEDGER
--   currency_tokens (currency, token): RECONCILE_CURRENCY_TOKENS, currencies upper-cased
-- $1: tolerance in base units, as exact integer text.   $2: TTL warning, in ledgers.
-- $3: whether currencies are checked against funding tokens (the map was configured).
--
-- Arithmetic is exact: the chain amount is HUGEINT (i128), the database amount is its exact
-- decimal text with the point moved by the token's decimals, built as digits and cast to
-- BIGNUM, so nothing overflows, nothing is rounded and no float is involved. BIGNUM has exact
-- +, - and comparisons, but abs() and * return DOUBLE, hence the CASE for absolute values and
-- digit padding for powers of ten.
WITH ledger_one AS (
    -- The ledger reader sends one row per contract; should it repeat one, the newest read wins
    -- rather than the join multiplying invoices.
    SELECT *
    FROM ledger_input
    QUALIFY row_number() OVER (
        PARTITION BY contract_id ORDER BY latest_ledger DESC NULLS LAST, read_status, funded_amount
    ) = 1
),
joined AS (
    SELECT
        r.*,
        l.contract_id IS NOT NULL AS was_read,
        l.read_status,
        l.read_error,
        l.escrow_invoice_id,
        l.funded_amount AS chain_funded_text,
        l.escrow_status,
        l.funding_token,
        l.token_decimals,
        l.latest_ledger,
        l.last_modified_ledger,
        l.live_until_ledger,
        l.distributed_principal,
        l.custodial,
        l.chain_balance,
        l.balance_note,
        l.balance_live_until_ledger,
        i128(l.funded_amount) AS chain_base
    FROM resolved_input AS r
    LEFT JOIN ledger_one AS l
        ON l.contract_id = r.contract_id AND r.address_error IS NULL
),
with_token AS (
    -- The token an invoice's currency must be funded in ($3: whether the map was configured).
    SELECT j.*, c.token AS expected_token
    FROM joined AS j
    LEFT JOIN currency_tokens AS c ON c.currency = upper(trim(j.currency))
),
amounts AS (
    SELECT
        *,
        -- What a custodial escrow must hold for its status (see the module docstring): funded
        -- while open or funded, funded less what was refunded once cancelled, nothing once
        -- withdrawn; a settled escrow has no balance invariant (claims lower it, coupons raise it).
        CASE WHEN custodial THEN i128(chain_balance) END AS balance_base,
        CASE
            WHEN escrow_status IN (0, 1) THEN chain_base
            WHEN escrow_status = 4 THEN chain_base - i128(COALESCE(distributed_principal, '0'))
            WHEN escrow_status = 3 THEN CAST(0 AS BIGNUM)
        END AS balance_required,
        -- The database total is exact decimal text at the column's own scale; trailing fraction
        -- zeros carry no value, and what is left must fit the token's decimals to exist on chain.
        regexp_full_match(db_total_funded, '-?[0-9]{1,60}(\.[0-9]{1,60})?') AS db_total_valid,
        base_units(db_total_funded, token_decimals) AS db_base,
        -- The database's other sides, when it has them: paid out (against DistributedPrincipal),
        -- and available (against what the escrow holds, or funded less paid out without custody).
        base_units(db_total_released, token_decimals) AS db_released_base,
        base_units(db_available, token_decimals) AS db_available_base,
        i128(COALESCE(distributed_principal, '0')) AS chain_distributed
    FROM with_token
),
available AS (
    -- What the chain holds for the invoice: the balance up to what the status requires (tokens
    -- beyond it are stray: the balance_surplus flag), all of it once settled, and funded less
    -- paid out when the escrow does not hold its tokens.
    SELECT
        *,
        CASE
            WHEN balance_base IS NOT NULL AND balance_required IS NOT NULL AND balance_base > balance_required
                THEN balance_required
            WHEN balance_base IS NOT NULL THEN balance_base
            ELSE chain_base - chain_distributed
        END AS chain_available
    FROM amounts
),
deltas AS (
    SELECT
        *,
        balance_base - balance_required AS balance_gap,
        db_total_released IS NOT NULL
            AND db_released_base IS DISTINCT FROM chain_distributed AS released_differs,
        db_available IS NOT NULL AND db_available_base IS DISTINCT FROM chain_available AS available_differs,
        db_base - chain_base AS delta,
        CASE WHEN db_base - chain_base < CAST(0 AS BIGNUM) THEN chain_base - db_base ELSE db_base - chain_base END
            AS abs_delta
    FROM available
),
classified AS (
    SELECT
        *,
        CASE
            WHEN invoice_id_error IS NOT NULL THEN 'invalid_invoice_id'
            WHEN contract_id IS NULL THEN 'no_address'
            WHEN address_error IS NOT NULL THEN 'invalid_address'
            WHEN NOT was_read THEN 'not_read'
            WHEN read_status = 'error' THEN 'read_error'
            WHEN read_status = 'no_instance' THEN 'no_instance'
            WHEN read_status = 'no_escrow' THEN 'no_escrow'
            WHEN read_status IS DISTINCT FROM 'ok' THEN 'unknown_read_status'
            WHEN chain_base IS NULL THEN 'undecodable_amount'
            WHEN token_decimals IS NULL THEN 'unknown_token_decimals'
            WHEN NOT (token_decimals BETWEEN 0 AND 38) THEN 'unsupported_token_decimals'
            WHEN escrow_invoice_id IS DISTINCT FROM invoice_id THEN 'invoice_id_mismatch'
            WHEN $3 AND expected_token IS NULL THEN 'unmapped_currency'
            WHEN $3 AND funding_token IS DISTINCT FROM expected_token THEN 'token_mismatch'
            WHEN balance_gap < CAST(0 AS BIGNUM) THEN 'balance_short'
            WHEN NOT db_total_valid THEN 'invalid_db_amount'
            WHEN db_base IS NULL THEN 'db_amount_not_representable'
            WHEN abs_delta > CAST($1 AS BIGNUM) AND delta > CAST(0 AS BIGNUM) THEN 'db_over_chain'
            WHEN abs_delta > CAST($1 AS BIGNUM) THEN 'chain_over_db'
            WHEN released_differs THEN 'released_mismatch'
            WHEN available_differs THEN 'available_mismatch'
            WHEN delta = CAST(0 AS BIGNUM) THEN 'equal'
            ELSE 'within_tolerance'
        END AS reason_code
    FROM deltas
),
with_class AS (
    SELECT
        *,
        CASE
            WHEN reason_code IN ('equal', 'within_tolerance') THEN 'match'
            WHEN reason_code IN (
                'invoice_id_mismatch',
                'token_mismatch',
                'balance_short',
                'released_mismatch',
                'available_mismatch',
                'db_amount_not_representable',
                'db_over_chain',
                'chain_over_db'
            ) THEN 'mismatch'
            WHEN reason_code IN ('no_instance', 'no_escrow') THEN 'missing_on_chain'
            WHEN reason_code = 'no_address' THEN 'unlinked'
            ELSE 'error'
        END AS class,
        live_until_ledger IS NOT NULL
            AND (live_until_ledger <= 0 OR live_until_ledger < latest_ledger) AS archived
    FROM classified
)
-- drift_rank is ranked over every part's rows afterwards (classify_drift_ranks.sql). The columns
-- resolved_input already holds (invoice_id, tenant_id, contract_id, currency, the database's
-- totals, address_source and the id and address checks) are not selected: the caller takes them
-- from its own frame by _row, so that no output column holds on to DuckDB's copy of the input.
SELECT
    _row,
    class,
    reason_code,
    CASE WHEN token_decimals BETWEEN 0 AND 38 THEN CAST(db_base AS VARCHAR) END AS db_funded_base_units,
    CAST(chain_base AS VARCHAR) AS chain_funded_base_units,
    CAST(delta AS VARCHAR) AS delta_base_units,
    CAST(NULL AS BIGINT) AS drift_rank,
    token_decimals,
    list_filter(
        -- Listed in sorted order, so the result is sorted.
        [
            CASE WHEN archived THEN 'archived' END,
            CASE
                WHEN balance_live_until_ledger IS NOT NULL
                    AND (balance_live_until_ledger <= 0 OR balance_live_until_ledger < latest_ledger)
                    THEN 'balance_archived'
            END,
            CASE WHEN balance_gap > CAST(0 AS BIGNUM) THEN 'balance_surplus' END,
            CASE
                WHEN balance_live_until_ledger IS NOT NULL
                    AND balance_live_until_ledger > 0
                    AND balance_live_until_ledger >= latest_ledger
                    AND balance_live_until_ledger - latest_ledger <= $2
                    THEN 'balance_ttl_expiring'
            END,
            CASE WHEN custodial AND chain_balance IS NULL THEN 'balance_unread' END,
            CASE WHEN last_modified_ledger > db_ledger_sequence THEN 'db_stale' END,
            CASE WHEN summary_row_count > 1 THEN 'duplicate_summary' END,
            CASE WHEN total_was_null THEN 'null_total' END,
            CASE
                WHEN NOT archived AND live_until_ledger - latest_ledger <= $2 THEN 'ttl_expiring'
            END
        ],
        lambda flag: flag IS NOT NULL
    ) AS flags,
    escrow_invoice_id,
    escrow_status,
    funding_token,
    latest_ledger,
    last_modified_ledger,
    live_until_ledger,
    CASE WHEN custodial THEN CAST(balance_base AS VARCHAR) END AS chain_balance_base_units,
    CAST(db_released_base AS VARCHAR) AS db_released_base_units,
    CAST(db_available_base AS VARCHAR) AS db_available_base_units,
    distributed_principal AS chain_distributed_base_units,
    custodial,
    -- For the reason sentence, built in Python from these exact values, and for the drift ranks;
    -- each only on the rows that use it: printing a BIGNUM costs, and nearly every row is equal.
    expected_token,
    CASE WHEN reason_code = 'available_mismatch' THEN CAST(chain_available AS VARCHAR) END
        AS chain_available_base_units,
    CASE WHEN balance_gap IS NOT NULL THEN CAST(balance_required AS VARCHAR) END AS balance_required_base_units,
    CAST(balance_gap AS VARCHAR) AS balance_gap_base_units,
    balance_note,
    CASE WHEN reason_code IN ('db_over_chain', 'chain_over_db') THEN CAST(abs_delta AS VARCHAR) END
        AS abs_delta_base_units,
    read_status,
    read_error,
    chain_funded_text
FROM with_class
