"""Classify: every resolved invoice against its ledger reading, into exactly one class.

The decision is DuckDB SQL (``sql/classify.sql``) over the two Arrow frames, in exact integer
arithmetic (HUGEINT and BIGNUM, never floats). The reason sentence is then written in Python
from the exact integers the SQL returns.

Classes and reason codes, in priority order (the first that applies wins):

=================================  ===================  ========================================
reason_code                         class                when
=================================  ===================  ========================================
``invalid_invoice_id``              error                ``invoice_id_error`` is set
``no_address``                      unlinked             no contract address is known
``invalid_address``                 error                ``address_error`` is set
``not_read``                        error                the ledger frame has no row for the address
``read_error``                      error                ``read_status`` is ``error`` (reason carries ``read_error``)
``no_instance``                     missing_on_chain     no contract instance on chain
``no_escrow``                       missing_on_chain     an instance without ``Escrow`` in its storage
``unknown_read_status``             error                ``read_status`` is none of ok/no_instance/no_escrow/error
``undecodable_amount``              error                ``funded_amount`` is not i128 integer text
``unknown_token_decimals``          error                ``token_decimals`` is null
``unsupported_token_decimals``      error                ``token_decimals`` outside 0..38
``invoice_id_mismatch``             mismatch             the escrow stores another ``invoice_id``
``unmapped_currency``               error                currencies are checked and this one has no token
``token_mismatch``                  mismatch             ``funding_token`` is not the currency's token
``balance_short``                   mismatch             a custodial escrow holds less than its status requires
``invalid_db_amount``               error                the DB total is not decimal text
``db_amount_not_representable``     mismatch             the DB total has more decimal places than the token
``equal``                           match                database and chain amounts are equal
``db_over_chain``                   mismatch             the database total is larger, beyond the tolerance
``chain_over_db``                   mismatch             the chain amount is larger, beyond the tolerance
``released_mismatch``               mismatch             DB ``total_released`` is not ``DistributedPrincipal``
``available_mismatch``              mismatch             DB ``available_amount`` is not what the escrow holds
``equal``                           match                database and chain amounts are equal
``within_tolerance``                match                ``|delta| <= tolerance_base_units``
=================================  ===================  ========================================

Amounts: the database total in base units is its exact decimal text times ``10^decimals``, at
whatever scale the column has; a total with more (non-zero) decimal places than the token
cannot exist on chain and is ``db_amount_not_representable``, whose reason names the remainder. ``delta_base_units`` is database minus
chain. ``drift_rank`` ranks the ``db_over_chain`` / ``chain_over_db`` rows by absolute drift in
major units (1 = worst, ties share a rank), compared exactly across tokens of different
decimals; it is null for every other row.

What a custodial escrow must hold (B its token balance, F ``funded_amount``, DP
``DistributedPrincipal``): B >= F while open (0) or funded (1); B >= F - DP once cancelled (4);
B >= 0 once withdrawn (3), where anything held is stray; no invariant once settled (2), as claims
lower it and coupons raise it. Less is ``balance_short``; more is the flag ``balance_surplus``.
Only custodial escrows (see the ledger reader) are held to it.

Flags (sorted): ``archived`` (``live_until_ledger`` 0 or below ``latest_ledger``),
``balance_archived`` / ``balance_ttl_expiring`` (the same for the Balance entry),
``balance_surplus``, ``balance_unread`` (custodial, but the balance was not read),
``duplicate_summary`` (``summary_row_count > 1``), ``null_total`` (``total_was_null``),
``ttl_expiring`` (not archived and ``live_until_ledger - latest_ledger <= ttl_warning_ledgers``).

When resolve recorded an ``address_conflict`` (``ESCROW_ADDR_BY_INVOICE`` disagrees with
``escrow_operations``), the reason sentence ends with a note naming the other address.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import duckdb
import polars as pl

from reconcile_audit.compute import db
from reconcile_audit.compute.amounts import (
    format_major,
    format_major_expr,
    one_line,
    split_decimal,
)
from reconcile_audit.compute.extract import OutOfScope
from reconcile_audit.compute.ledger import read_ledger
from reconcile_audit.compute.ledger.types import LedgerRead
from reconcile_audit.compute.result import AuditResult, Spool, Tallies, spool_part
from reconcile_audit.compute.schemas import (
    ESCROW_STATUS_WORDS,
    FINDINGS,
    HELD,
    LEDGER,
    RESOLVED,
    ClassCounts,
    compacted,
    conform,
    count_classes,
    filled_at,
)
from reconcile_audit.compute.settings import CURRENCY_TOKENS_SETTING, Settings
from reconcile_audit.compute.stranded import find_stranded

if TYPE_CHECKING:
    import pyarrow as pa

logger = logging.getLogger(__name__)

CLASSIFY_SQL: Final = "classify.sql"
CLASSIFY_MACROS_SQL: Final = "classify_macros.sql"
DRIFT_RANKS_SQL: Final = "classify_drift_ranks.sql"
REASON_CODES: Final = {
    "invalid_invoice_id": "error",
    "no_address": "unlinked",
    "invalid_address": "error",
    "not_read": "error",
    "read_error": "error",
    "no_instance": "missing_on_chain",
    "no_escrow": "missing_on_chain",
    "unknown_read_status": "error",
    "undecodable_amount": "error",
    "unknown_token_decimals": "error",
    "unsupported_token_decimals": "error",
    "invoice_id_mismatch": "mismatch",
    "unmapped_currency": "error",
    "token_mismatch": "mismatch",
    "balance_short": "mismatch",
    "released_mismatch": "mismatch",
    "available_mismatch": "mismatch",
    "invalid_db_amount": "error",
    "db_amount_not_representable": "mismatch",
    "equal": "match",
    "within_tolerance": "match",
    "db_over_chain": "mismatch",
    "chain_over_db": "mismatch",
}
DEFAULT_TTL_WARNING_LEDGERS: Final = 17_280 * 7  # about a week of 5-second ledgers
# Invoices DuckDB classifies at a time (two parts are in flight). At 1M invoices, 125k peaked 0.18
# GB above 62.5k in the same time; 31.25k saved 0.08 GB more and took 1 to 2 s longer.
PART_ROWS: Final = 62_500


def _with_currency(amount: str, currency: str | None) -> str:
    return f"{amount} {currency}" if currency else amount


def _amounts_sentence(row: dict[str, Any]) -> str:
    decimals = row["token_decimals"]
    currency = row["currency"]
    # At the database's own scale, as the vectorised sentences write it (_equal_reasons).
    db_text = _with_currency(_db_major(row["db_total_funded"]), currency)
    chain_text = _with_currency(format_major(int(row["chain_funded_base_units"]), decimals), currency)
    if row["delta_base_units"] is None:  # an invoice_id_mismatch whose DB total does not fit the token
        return f"DB {db_text} vs chain {chain_text}"
    value = int(row["delta_base_units"])
    if value == 0:
        return f"DB {db_text} equals chain {chain_text}"
    side = "under" if value > 0 else "over"
    return f"DB {db_text} vs chain {chain_text} (chain {side} by {format_major(abs(value), decimals)})"


def _db_major(text: str | None) -> str:
    """The database total at its own scale, as people read it: "155560.584999" -> "155,560.584999"."""
    parts = split_decimal(text)
    if parts is None:
        return "n/a"
    sign, whole, fraction = parts
    return format_major(int(sign + whole + fraction), len(fraction))


def _db_side(row: dict[str, Any], column: str) -> str:
    return _with_currency(_db_major(row[column]), row["currency"])


def _chain_sentence(row: dict[str, Any]) -> str:
    return "chain " + _with_currency(
        format_major(int(row["chain_funded_base_units"]), row["token_decimals"]), row["currency"]
    )


def _not_representable(row: dict[str, Any]) -> str:
    """Why the database total cannot exist on chain: its digits past the token's decimals, exactly,
    and the exact difference from the chain amount at the database's scale."""
    decimals, currency = row["token_decimals"], row["currency"]
    sign, whole, fraction = split_decimal(row["db_total_funded"]) or ("", "0", "")
    fraction = fraction.rstrip("0")  # SQL chose this row on the significant places alone
    scale = len(fraction)
    remainder = sign + "0" * (decimals + 1) + fraction[decimals:]
    chain = int(row["chain_funded_base_units"])
    difference = int(sign + whole + fraction) - chain * 10 ** (scale - decimals)
    side = "under" if difference > 0 else "over"
    return (
        f"DB {_with_currency(_db_major(row['db_total_funded']), currency)} has {scale} decimal "
        f"places, more than the token's {decimals}: {_with_currency(format_major(int(remainder), scale), currency)} "
        f"of it cannot be held on chain; {_chain_sentence(row)} (chain {side} by {format_major(abs(difference), scale)})"
    )


def _balance_sentence(row: dict[str, Any]) -> str:
    """What a custodial escrow holds against what its status requires, exactly."""
    decimals, currency = row["token_decimals"], row["currency"]
    held = _with_currency(format_major(int(row["chain_balance_base_units"]), decimals), currency)
    required = format_major(int(row["balance_required_base_units"]), decimals)
    gap = int(row["balance_gap_base_units"])
    status = ESCROW_STATUS_WORDS.get(row["escrow_status"], f"status {row['escrow_status']}")
    if gap < 0:
        return f"the escrow holds {held}, {format_major(-gap, decimals)} short of the {required} status {status} requires"
    if gap > 0:
        return f"the escrow holds {held}, {format_major(gap, decimals)} more than the {required} status {status} requires"
    return f"the escrow holds {held}, as status {status} requires"


def _token_label(token: str | None, symbols: Mapping[str, str]) -> str:
    if token is None:
        return "no token"
    symbol = symbols.get(token)
    return f"{one_line(symbol)} ({token})" if symbol else token


def _reason(row: dict[str, Any], tolerance_base_units: int, symbols: Mapping[str, str]) -> str:
    code = row["reason_code"]
    contract = row["contract_id"]
    if code == "invalid_invoice_id":
        text = f"invalid invoice id {row['invoice_id']!r}: {row['invoice_id_error']}"
    elif code == "no_address":
        text = "no escrow address: no completed create operation and no active ESCROW_ADDR_BY_INVOICE mapping"
    elif code == "invalid_address":
        text = f"invalid escrow address {contract!r} (from {row['address_source']}): {row['address_error']}"
    elif code == "not_read":
        text = f"the ledger read has no result for {contract}"
    elif code == "read_error":
        text = f"ledger read failed for {contract}: {row['read_error'] or 'no cause given'}"
    elif code == "no_instance":
        text = f"no contract instance on chain at {contract}"
    elif code == "no_escrow":
        text = f"the contract instance at {contract} stores no Escrow"
    elif code == "unknown_read_status":
        text = f"the ledger reader returned an unknown read status {row['read_status']!r} for {contract}"
    elif code == "undecodable_amount":
        text = f"the escrow's funded_amount {row['chain_funded_text']!r} is not an i128 integer"
    elif code == "unknown_token_decimals":
        # The ledger reader already words the cause as a whole sentence naming the token.
        text = row["read_error"] or f"the decimals of funding token {row['funding_token']} are unknown"
    elif code == "unsupported_token_decimals":
        text = f"token decimals {row['token_decimals']} are outside the supported range 0 to 38"
    elif code == "invoice_id_mismatch":
        text = (
            f"the escrow at {contract} belongs to invoice {row['escrow_invoice_id']!r}, "
            f"not {row['invoice_id']!r}; {_amounts_sentence(row)}"
        )
    elif code == "unmapped_currency":
        token = _token_label(row["funding_token"], symbols)
        if row["currency"] and row["currency"].strip():
            text = (
                f"invoice currency {one_line(row['currency'])!r} has no funding token in {CURRENCY_TOKENS_SETTING}, "
                f"so the escrow's token {token} cannot be checked"
            )
        else:
            text = f"the invoice has no currency, so the escrow's token {token} cannot be checked"
    elif code == "token_mismatch":
        held = format_major(int(row["chain_funded_base_units"]), row["token_decimals"])
        symbol = symbols.get(row["funding_token"])
        text = (
            f"the escrow is funded in {_token_label(row['funding_token'], symbols)}, but {row['currency']} "
            f"invoices must be funded in {_token_label(row['expected_token'], symbols)} "
            f"({CURRENCY_TOKENS_SETTING}); its funded_amount is {held} "
            + (one_line(symbol) if symbol else "of that token")
        )
    elif code == "balance_short":
        text = f"{_balance_sentence(row)}; {_amounts_sentence(row) if row['delta_base_units'] is not None else _chain_sentence(row)}"
    elif code == "released_mismatch":
        text = (
            f"DB total_released {_db_side(row, 'db_total_released')} vs the escrow's DistributedPrincipal "
            f"{_with_currency(format_major(int(row['chain_distributed_base_units'] or 0), row['token_decimals']), row['currency'])}"
            f"; {_amounts_sentence(row)}"
        )
    elif code == "available_mismatch":
        available = _with_currency(
            format_major(int(row["chain_available_base_units"]), row["token_decimals"]), row["currency"]
        )
        held = (
            "the escrow holds for it"
            if row["chain_balance_base_units"] is not None
            else "is funded less paid out on chain"
        )
        text = f"DB available_amount {_db_side(row, 'db_available')} vs the {available} {held}; {_amounts_sentence(row)}"
    elif code == "invalid_db_amount":
        text = f"the database total_funded {one_line(row['db_total_funded'] or '')!r} is not a decimal number"
    elif code == "db_amount_not_representable":
        text = _not_representable(row)
    elif code == "within_tolerance":
        text = f"{_amounts_sentence(row)}, within the tolerance of {tolerance_base_units:,} base units"
    else:  # equal, db_over_chain, chain_over_db
        text = _amounts_sentence(row)
    if code in _AMOUNT_CODES | {"within_tolerance"} and row["balance_gap_base_units"] is not None:
        text += f"; {_balance_sentence(row)}"  # every side compared is named
    if "db_stale" in (row["flags"] or []):
        text += (
            f". The database last synced at ledger {row['db_ledger_sequence']:,}; the escrow changed at "
            f"ledger {row['last_modified_ledger']:,}"
        )
    if row["address_conflict"] is not None:
        text += (
            f". Note: ESCROW_ADDR_BY_INVOICE maps this invoice to {row['address_conflict']}; "
            "the escrow_operations address was used"
        )
    return text


_AMOUNT_CODES: Final = frozenset({"equal", "db_over_chain", "chain_over_db"})


def _equal_reasons() -> pl.Expr:
    """The sentence of an ``equal`` row (nearly every row), vectorised: what :func:`_amounts_sentence`
    writes when the delta is zero."""
    suffix = (
        pl.when(pl.col("currency").is_not_null() & (pl.col("currency") != ""))
        .then(pl.lit(" ") + pl.col("currency"))
        .otherwise(pl.lit(""))
    )
    # The database total at its own scale: its digits, with the point moved by its fraction's length.
    total = pl.col("db_total_funded")
    scale = total.str.split(".").list.get(1, null_on_oob=True).str.len_chars().fill_null(0).cast(pl.Int64)
    db_text = format_major_expr(total.str.replace(".", "", literal=True), scale)
    chain_text = format_major_expr(pl.col("chain_funded_base_units"), pl.col("token_decimals"))
    return pl.concat_str(pl.lit("DB "), db_text, suffix, pl.lit(" equals chain "), chain_text, suffix)


def _reasons(raw: pl.DataFrame, tolerance_base_units: int, symbols: Mapping[str, str]) -> pl.Series:
    """The reason sentence of each row: ``equal`` rows vectorised, the rest (few: the drifts,
    errors, and any row carrying an address-conflict note, a held balance or a stale database)
    one by one through :func:`_reason`."""
    common = (
        (pl.col("reason_code") == "equal")
        & pl.col("address_conflict").is_null()
        & pl.col("balance_gap_base_units").is_null()
        & ~pl.col("flags").list.contains("db_stale")
    )
    frame = raw.select(common.alias("common"), pl.when(common).then(_equal_reasons()).alias("reason"))
    rare = frame.select(pl.arg_where(~pl.col("common"))).to_series().to_list()
    if not rare:
        return frame.get_column("reason")
    reasons = frame.get_column("reason").to_list()
    for index in rare:
        reasons[index] = _reason(raw.row(index, named=True), tolerance_base_units, symbols)
    return pl.Series("reason", reasons, dtype=pl.String)


def _resolved_input(resolved: pl.DataFrame) -> pl.DataFrame:
    frame = conform(resolved, RESOLVED, "classify (resolved)")
    conflict = (
        pl.col("address_conflict").cast(pl.String)
        if "address_conflict" in frame.columns
        else pl.lit(None, dtype=pl.String).alias("address_conflict")
    )
    return frame.select(*RESOLVED.names(), conflict).with_row_index("_row")


def classify(
    resolved: pl.DataFrame,
    ledger_frame: pl.DataFrame,
    *,
    tolerance_base_units: int = 0,
    ttl_warning_ledgers: int = DEFAULT_TTL_WARNING_LEDGERS,
    currency_tokens: Mapping[str, str] | None = None,
    token_symbols: Mapping[str, str] | None = None,
    part_rows: int = PART_ROWS,
) -> pl.DataFrame:
    """One ``FINDINGS`` row per row of ``resolved``, in the same order (module docstring).

    DuckDB classifies ``part_rows`` consecutive invoices at a time, each part with its contracts' ledger rows;
    ``drift_rank`` is then ranked over all of them.

    ``ledger_frame`` is the ``LEDGER`` frame. A valid address missing from it becomes an
    ``error`` row (``not_read``), never a dropped invoice. ``currency_tokens`` maps an upper-case
    invoice currency to the token its escrows must hold; None checks no currency.
    ``token_symbols`` names tokens in reason sentences.
    """
    options = _Options(tolerance_base_units, ttl_warning_ledgers, currency_tokens, token_symbols or {})
    return _classified(resolved, ledger_frame, options, part_rows=part_rows).findings


@dataclass(frozen=True)
class _Options:
    tolerance_base_units: int
    ttl_warning_ledgers: int
    currency_tokens: Mapping[str, str] | None
    token_symbols: Mapping[str, str]

    @classmethod
    def of(cls, settings: Settings, ledger_read: LedgerRead) -> _Options:
        return cls(
            settings.tolerance_base_units,
            settings.ttl_warning_ledgers,
            settings.currency_tokens,
            ledger_read.token_symbols,
        )


@dataclass(frozen=True)
class _Classification:
    """FINDINGS of every row, or with a spool, of the rows it holds: every non-match and every
    match with a flag."""

    findings: pl.DataFrame
    spool: Spool | None


def _classified(
    resolved: pl.DataFrame,
    ledger_frame: pl.DataFrame,
    options: _Options,
    *,
    in_flight: Sequence[str] = (),
    spool_directory: Path | None = None,
    part_rows: int = PART_ROWS,
) -> _Classification:
    """:func:`classify`, with the invoices of the ``in_flight`` contracts flagged (:func:`_in_flight`)
    and, given ``spool_directory``, the plain matches written there part by part instead of held."""
    if options.tolerance_base_units < 0:
        raise ValueError("tolerance_base_units must not be negative")
    started = time.perf_counter()
    resolved_frame = _resolved_input(resolved)
    ledger_input = conform(ledger_frame, LEDGER, "classify (ledger)").select(LEDGER.names())
    tokens = pl.DataFrame(
        list((options.currency_tokens or {}).items()),
        schema={"currency": pl.String, "token": pl.String},
        orient="row",
    ).to_arrow()
    params = [
        str(options.tolerance_base_units),
        options.ttl_warning_ledgers,
        options.currency_tokens is not None,
    ]
    if spool_directory is not None:
        spool_directory.mkdir(parents=True, exist_ok=True)
        for stale in spool_directory.glob("*.parquet"):  # a first classification's, read again since
            stale.unlink()
    spooled: list[tuple[ClassCounts, Tallies]] = []  # of each part's every row

    def finished(index: int, part: pl.DataFrame) -> pl.DataFrame:
        part = _in_flight(part, in_flight) if in_flight else part
        if spool_directory is None:
            return part
        spool_part(part, spool_directory, index)
        spooled.append((count_classes(part), Tallies.of(part)))
        return _detached(part.filter(HELD))

    parts = _classified_parts(
        resolved_frame,
        ledger_input,
        tokens,
        params,
        max(1, part_rows),
        options,
        finished,
        detach=spool_directory is None,
    )
    del resolved_frame, ledger_input
    findings = _with_drift_ranks(pl.concat(parts, rechunk=False) if len(parts) > 1 else parts[0])
    logger.info(
        "classify: %d invoices in %.2f s (%d parts)",
        resolved.height,
        time.perf_counter() - started,
        len(parts),
    )
    if spool_directory is None:
        return _Classification(findings.drop("_row"), None)
    spool = Spool(
        spool_directory,
        max(1, part_rows),
        findings.get_column("_row"),
        ClassCounts.summed(counts for counts, _ in spooled),
        Tallies.combined([tallies for _, tallies in spooled]),
    )
    return _Classification(findings.drop("_row"), spool)


def _classified_parts(
    resolved_frame: pl.DataFrame,
    ledger_input: pl.DataFrame,
    tokens: pa.Table,
    params: list[Any],
    size: int,
    options: _Options,
    finished: Callable[[int, pl.DataFrame], pl.DataFrame],
    *,
    detach: bool,
) -> list[pl.DataFrame]:
    """What ``finished`` keeps of each part's FINDINGS (with ``_row`` and ``abs_delta_base_units``),
    for ``resolved_frame`` in consecutive parts of ``size`` invoices, in its order. ``detach``:
    each part keeps its own copy of what DuckDB wrote (:func:`_detached`), as every part is kept.

    Each part goes to DuckDB with the ledger rows of its own contracts, so that the query holds
    one part's rows at a time: at 1M invoices, all at once took 1.8 GB over the stage's start.
    Each part comes back in its input order, so their concatenation is the input's order, with no
    sort of every row and column afterwards.
    """
    starts = range(0, max(resolved_frame.height, 1), size)
    parts: list[pl.DataFrame] = []
    # Two steps per part, on both cores: while DuckDB decides part k+1 (it releases the GIL),
    # polars writes part k's sentences. At 1M invoices the stage took 5.7 s instead of 7.3 s.
    with duckdb.connect() as conn, ThreadPoolExecutor(1, thread_name_prefix="classify") as sql_thread:
        conn.register("currency_tokens", tokens)
        conn.execute(db.read_sql(CLASSIFY_MACROS_SQL))

        def decide(start: int) -> Future[pl.DataFrame]:
            resolved_part = resolved_frame.slice(start, size)
            ledger_part = (
                ledger_input if size >= resolved_frame.height else _ledger_of(ledger_input, resolved_part)
            )
            return sql_thread.submit(_decided_part, conn, resolved_part, ledger_part, params, detach)

        pending = decide(starts[0])
        for index, start in enumerate(starts):
            computed = pending.result()
            if index + 1 < len(starts):
                pending = decide(starts[index + 1])
            part = _finished_part(
                computed,
                resolved_frame.slice(start, size),
                options.tolerance_base_units,
                options.token_symbols,
            )
            del computed
            parts.append(finished(index, part))
    return parts


def _ledger_of(ledger_frame: pl.DataFrame, resolved_part: pl.DataFrame) -> pl.DataFrame:
    """The ledger rows of the contracts of ``resolved_part``: every reading of each of them, as
    classify.sql picks one reading per contract."""
    contracts = resolved_part.get_column("contract_id").drop_nulls()
    return ledger_frame.filter(pl.col("contract_id").is_in(contracts.implode()))


def _decided_part(
    conn: duckdb.DuckDBPyConnection,
    resolved_part: pl.DataFrame,
    ledger_part: pl.DataFrame,
    params: list[Any],
    detach: bool,
) -> pl.DataFrame:
    """What classify.sql decides for one part (with ``_row``, and ``abs_delta_base_units`` for the
    drift ranks), on ``conn`` (its macros and currency tokens in place), in the part's order."""
    # Polars' own string views go to DuckDB as they are; the oldest Arrow level would copy every
    # string (about 0.8 GB at 1M invoices).
    conn.register("resolved_input", resolved_part.to_arrow(compat_level=pl.CompatLevel.newest()))
    conn.register("ledger_input", ledger_part.to_arrow(compat_level=pl.CompatLevel.newest()))
    try:
        table = conn.sql(db.read_sql(CLASSIFY_SQL), params=params).to_arrow_table()
    finally:
        # The Arrow copies of both inputs go as soon as they are used: at 1M invoices each is
        # hundreds of MB of the stage's peak.
        conn.unregister("resolved_input")
        conn.unregister("ledger_input")
    if table.num_rows != resolved_part.height:  # one row per invoice: the joins never multiply
        raise AssertionError(f"classify: {table.num_rows} rows out of {resolved_part.height} in")
    computed = pl.from_arrow(table)
    del table
    assert isinstance(computed, pl.DataFrame)
    computed = _detached(computed) if detach else computed
    # The sort, a copy of every column, only when DuckDB did not keep the input's order.
    return computed if computed.get_column("_row").is_sorted() else computed.sort("_row")


def _detached(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with its own copy of every string. Strings DuckDB wrote are views into its
    export, which one long string keeps alive whole (every column of the batch): copied out
    through Arrow's plain strings, the export goes with its part (at 1M invoices it otherwise
    held 0.3 to 0.6 GB to the end of the run)."""
    detached = pl.from_arrow(frame.to_arrow(compat_level=pl.CompatLevel.oldest()))
    assert isinstance(detached, pl.DataFrame)
    return detached


def _finished_part(
    computed: pl.DataFrame,
    resolved_part: pl.DataFrame,
    tolerance_base_units: int,
    symbols: Mapping[str, str],
) -> pl.DataFrame:
    """FINDINGS of one part (with ``_row`` and ``abs_delta_base_units``): what classify.sql
    decided, beside the columns the resolved frame already holds (not DuckDB's copies), with
    the reason sentences."""
    raw = computed.hstack(resolved_part.select(_FROM_RESOLVED).get_columns())
    reasons = _reasons(raw, tolerance_base_units, symbols)
    explanation = pl.lit(None, dtype=pl.String).alias("explanation")  # the explain stage's to fill
    part = conform(raw.with_columns(reasons, explanation), FINDINGS, "classify").select(
        "_row", *FINDINGS.names(), "abs_delta_base_units"
    )
    # The columns null on every row (the sides a source does not have, the balances of escrows
    # that hold none) as one null: at 1M invoices, 0.06 GB.
    return compacted(part, _FEW_DISTINCT)


# Long strings of a few distinct values that DuckDB writes out once per row, each stored once
# (schemas.stored_once). address_source comes from the resolved frame, stored once by resolve.
_FEW_DISTINCT: Final = ("funding_token",)


# The columns classify.sql leaves out because the resolved frame already holds them.
_FROM_RESOLVED: Final = (
    "invoice_id",
    "tenant_id",
    "contract_id",
    "currency",
    "db_total_funded",
    "address_source",
    "db_ledger_sequence",
    "db_total_released",
    "db_available",
    "address_error",
    "invoice_id_error",
    "address_conflict",
)


def _with_drift_ranks(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with ``drift_rank`` over all of its drifted rows (classify_drift_ranks.sql), the
    helper ``abs_delta_base_units`` dropped."""
    drifted = (
        frame.with_row_index("_pos")
        .filter(pl.col("reason_code").is_in(["db_over_chain", "chain_over_db"]))
        .select("_pos", pl.col("abs_delta_base_units").alias("abs_delta"), "token_decimals")
    )
    frame = frame.drop("abs_delta_base_units")
    if drifted.is_empty():
        return frame
    with duckdb.connect() as conn:
        conn.register("drifted", drifted.to_arrow())
        ranks = conn.sql(db.read_sql(DRIFT_RANKS_SQL)).pl()
    rank = filled_at(frame, ranks.get_column("_pos"), ranks.get_column("drift_rank").cast(pl.Int64))
    return frame.with_columns(rank)


Reread = Callable[[list[str], Settings], LedgerRead]


def _read_again(contract_ids: list[str], settings: Settings) -> LedgerRead:
    return read_ledger(contract_ids, settings, progress=False)


def audit(
    resolved: pl.DataFrame,
    ledger_read: LedgerRead,
    settings: Settings,
    *,
    out_of_scope: OutOfScope | None = None,
    reread: Reread = _read_again,
    spool: Path | None = None,
) -> AuditResult:
    """The classify stage as the notebook runs it: the findings, counted once, with the ledger range.

    No sweep is a snapshot: each batch reads the latest ledger, so an escrow funded while the
    sweep ran looks like drift that is not. A finding on an escrow (or its Balance entry) modified
    after ``sweep_start_ledger`` is read again once, instance and balance together, and every
    invoice classified again: one that now matches is a match flagged ``settled_during_run``, one
    that does not keeps its (new) class flagged ``changed_during_run``. So is a finding read at an
    earlier ledger than the database last synced (``db_ledger_sequence``): the sweep starts
    before the extract, so the database can be the newer side; it is flagged only when its entry
    did change.

    ``out_of_scope`` (read in the same sweep) gives the stranded escrows, apart from the counts.
    Given ``spool`` (a folder of the run's own), the plain matches are written there
    (:class:`~reconcile_audit.compute.result.Spool`) and the result holds the other rows.
    """
    options = _Options.of(settings, ledger_read)
    classified = _classified(resolved, ledger_read.frame, options, spool_directory=spool)
    moved, behind = _changed_during_sweep(classified.findings, ledger_read)
    changed = moved + behind
    ledger_max = ledger_read.ledger_max
    if changed:
        again = reread(changed, settings)
        logger.info(
            "classify: %d findings read again (%d changed during the sweep, %d read before the "
            "database's last sync)",
            len(changed),
            len(moved),
            len(behind),
        )
        # The re-read replaces the sweep's reading of those contracts; the rest stand. Those read
        # before the database's sync are flagged only when the entry did change.
        frame = pl.concat([ledger_read.frame.filter(~pl.col("contract_id").is_in(changed)), again.frame])
        classified = _classified(
            resolved,
            frame,
            options,
            in_flight=moved + _entries_changed(ledger_read.frame, again.frame, behind),
            spool_directory=spool,
        )
        ledger_max = max((v for v in (ledger_max, again.ledger_max) if v is not None), default=None)
    result = AuditResult.of(
        classified.findings,
        ledger_min=ledger_read.ledger_min,
        ledger_max=ledger_max,
        incomplete=ledger_read.incomplete_because(settings.min_read_share),
        reread=len(changed),
        stranded=None if out_of_scope is None else find_stranded(out_of_scope, ledger_read),
        spool=classified.spool,
    )
    if result.incomplete:
        logger.error("the run is incomplete: %s", result.incomplete)
    logger.info(
        "classify: %s", ", ".join(f"{name} {count}" for name, count in result.counts.by_class().items())
    )
    return result


def _changed_during_sweep(findings: pl.DataFrame, ledger_read: LedgerRead) -> tuple[list[str], list[str]]:
    """Contracts of findings whose reading may be out of date: those whose instance or Balance
    entry was modified after the sweep began, and those (the others) read at an earlier ledger than
    the database last synced. The sweep reads most escrows before the extract (ledger.EarlySweep),
    so the database can be the newer side: an escrow funded and synced in between would otherwise
    be a drift that is not."""
    open_rows = findings.filter((pl.col("class") != "match") & pl.col("contract_id").is_not_null())
    moved: list[str] = []
    start = ledger_read.sweep_start_ledger
    if start is not None:
        modified = ledger_read.frame.filter(
            (pl.col("last_modified_ledger") > start) | (pl.col("balance_last_modified_ledger") > start)
        ).get_column("contract_id")
        moved = (
            open_rows.filter(pl.col("contract_id").is_in(modified.implode()))
            .get_column("contract_id")
            .unique(maintain_order=True)
            .to_list()
        )
    behind = open_rows.filter(
        (pl.col("db_ledger_sequence") > pl.col("latest_ledger")).fill_null(False)
        & ~pl.col("contract_id").is_in(moved)
    )
    return moved, behind.get_column("contract_id").unique(maintain_order=True).to_list()


def _entries_changed(before: pl.DataFrame, after: pl.DataFrame, contracts: list[str]) -> list[str]:
    """Those of ``contracts`` whose entries ``after`` (the re-read) holds at another modification
    ledger than ``before`` (the sweep): read again, and changed."""
    columns = ("contract_id", "last_modified_ledger", "balance_last_modified_ledger")
    old = before.filter(pl.col("contract_id").is_in(contracts)).select(columns).unique("contract_id")
    new = after.select(columns).unique("contract_id")
    pairs = old.join(new, on="contract_id", how="full", suffix="_again", coalesce=True)
    differs = pl.col("last_modified_ledger").ne_missing(pl.col("last_modified_ledger_again")) | pl.col(
        "balance_last_modified_ledger"
    ).ne_missing(pl.col("balance_last_modified_ledger_again"))
    changed = set(pairs.filter(differs).get_column("contract_id").to_list())
    return [contract for contract in contracts if contract in changed]


def _in_flight(findings: pl.DataFrame, changed: Sequence[str]) -> pl.DataFrame:
    """Flag the invoices of ``changed``: settled during the run when they now match."""
    flag = (
        pl.when(pl.col("class") == "match")
        .then(pl.lit("settled_during_run"))
        .otherwise(pl.lit("changed_during_run"))
    )
    return findings.with_columns(
        pl.when(pl.col("contract_id").is_in(changed))
        .then(pl.concat_list(pl.col("flags"), flag).list.sort())
        .otherwise(pl.col("flags"))
        .alias("flags")
    )
