"""Extract: every reconcilable invoice from the source database, in one Arrow-native query.

The query is ``sql/extract_invoices.sql`` (or the user's file, ``settings.extract_sql_path``),
run once with ``$1`` bound to the tenant id or NULL. PostgreSQL answers through ADBC, DuckDB
through its own Arrow export; both land in a polars frame with schema ``INVOICES``, sorted by
``invoice_id`` so every run lists invoices in the same order.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

import polars as pl

from reconcile_audit.compute import db
from reconcile_audit.compute.schemas import (
    INVOICES,
    OPTIONAL_INVOICE_COLUMNS,
    OUT_OF_SCOPE,
    compacted,
    conform,
)
from reconcile_audit.compute.settings import Settings, redact_url
from reconcile_audit.compute.sharding import in_shard, unsharded
from reconcile_audit.errors import ExtractError, ReconcileAuditError, ScopeError, SourceSchemaError

if TYPE_CHECKING:
    import pyarrow as pa

logger = logging.getLogger(__name__)

EXTRACT_SQL = "extract_invoices.sql"

# Each pattern yields the table and/or column a database says is missing. PostgreSQL:
# 'relation "x" does not exist', 'column x.y does not exist', 'column "y" does not exist',
# 'column "y" of relation "x" does not exist'. DuckDB: 'Table with name x does not exist',
# 'Table "x" does not have a column named "y"', 'Referenced column "y" not found'.
_SCHEMA_ERROR_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(r'column "(?P<column>[^"]+)" of relation "(?P<table>[^"]+)" does not exist'),
    re.compile(r'relation "(?P<table>[^"]+)" does not exist'),
    re.compile(r'column (?P<table>[^\s".]+)\.(?P<column>[^\s"]+) does not exist'),
    re.compile(r'column "(?P<column>[^"]+)" does not exist'),
    re.compile(r"Table with name (?P<table>[^\s!]+) does not exist"),
    re.compile(r'Table "(?P<table>[^"]+)" does not have a column named "(?P<column>[^"]+)"'),
    re.compile(r'Referenced column "(?P<column>[^"]+)" not found'),
)


def _tenant_params(sql: str, source: str, tenant_id: str | None) -> list[str | None]:
    """What ``sql`` binds: ``[tenant_id]`` when it uses ``$1`` (a placeholder outside its strings
    and comments, :func:`db.placeholders`; a text it cannot read is bound, for the database to
    refuse), else nothing. A query that ignores the tenant cannot run for one: PostgreSQL would
    run it over every tenant, as if it were the one asked for."""
    found = db.placeholders(sql)
    if found is None or any(number == 1 for _, _, number in found):
        return [tenant_id]
    if tenant_id is not None:
        raise ExtractError(
            f"the extract query {source} does not use $1, so it cannot filter by tenant "
            f"{tenant_id!r}; bind $1 to the tenant id (NULL for all tenants)"
        )
    return []


def schema_error_from(message: str) -> SourceSchemaError | None:
    """A :class:`SourceSchemaError` naming table and column, if ``message`` reports one missing."""
    for pattern in _SCHEMA_ERROR_PATTERNS:
        match = pattern.search(message)
        if match is not None:
            found = match.groupdict()
            table = found.get("table")
            if table is not None:
                table = table.rsplit(".", 1)[-1]  # "public.invoices" -> "invoices"
            column = found.get("column")
            detail = "missing column" if column else "missing table"
            return SourceSchemaError(table, column, f"{detail} ({_first_line(message)})")
    return None


def _extract_error(message: str, source: str, url: str) -> ReconcileAuditError:
    """The error an operator can act on: the connection's real cause, the missing table or
    column, or the query's first line of complaint."""
    cause = db.connection_cause(message)
    if cause is not None:
        return ExtractError(f"cannot connect to the source database {redact_url(url)}: {cause}")
    schema_error = schema_error_from(message)
    if schema_error is not None:
        return schema_error
    return ExtractError(f"the extract query {source} failed: {_first_line(message)}")


def _first_line(message: str) -> str:
    # Drivers append the query text and a caret diagram; the first line names the problem.
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return lines[0] if lines else message


def _query_text(settings: Settings) -> tuple[str, str]:
    """The SQL to run and a name for it in messages."""
    path: Path | None = settings.extract_sql_path
    if path is None:
        return db.read_sql(EXTRACT_SQL), EXTRACT_SQL
    try:
        sql = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ExtractError(f"cannot read the extract SQL file {path}: {exc.strerror or exc}") from exc
    _check_one_query(sql, str(path))
    return sql, str(path)


_READING = ("select", "with", "values", "table", "(")


def _check_one_query(sql: str, source: str) -> None:
    """A custom extract file holds exactly one statement, and it reads. Checked before the source
    is touched; the read-only connection is the second line of defence, not the first."""
    outside = db.without_comments(sql, quoted_as="''")
    if outside is None:
        raise ExtractError(f"the extract SQL file {source} holds a quote or comment that is not closed")
    code = outside.strip().rstrip(";").strip()
    if ";" in code:
        raise ExtractError(
            f"the extract SQL file {source} holds more than one statement; it must be one query"
        )
    if not code.lower().startswith(_READING):
        first = code.split(None, 1)[0] if code else "nothing"
        raise ExtractError(
            f"the extract SQL file {source} must be one query that reads (SELECT or WITH), not {first[:40]!r}"
        )


MONEY_COLUMN: Final = "db_total_funded"
_LEGACY_MONEY_COLUMN: Final = "db_total_funded_cents"


SUMMARY_ROW_ID: Final = "summary_row_id"  # the packaged query's key to the other sides


def _to_invoices(frame: pl.DataFrame, source: str) -> pl.DataFrame:
    """``frame`` checked and cast to ``INVOICES`` (with ``summary_row_id`` after, when the query
    returns it); a clear error names what a user query lacks."""
    missing = [
        name for name in INVOICES if name not in frame.columns and name not in OPTIONAL_INVOICE_COLUMNS
    ]
    if missing:
        hint = (
            f"; {_LEGACY_MONEY_COLUMN} (cents) was replaced by {MONEY_COLUMN}, the total as exact decimal "
            "major units, e.g. CAST(escrow_summaries.total_funded AS TEXT)"
            if MONEY_COLUMN in missing and _LEGACY_MONEY_COLUMN in frame.columns
            else ""
        )
        raise ExtractError(
            f"the extract query {source} did not return the columns {missing}; "
            f"it must return {list(INVOICES)}{hint}"
        )
    money_dtype = frame.schema[MONEY_COLUMN]
    if money_dtype.is_float():
        # A float has already lost the exact amount; text or a decimal keeps it.
        raise ExtractError(
            f"the extract query {source} returned {MONEY_COLUMN} as {money_dtype}; it must be exact "
            "decimal major units (a DECIMAL/numeric, an integer, or their text), never a float"
        )
    if money_dtype != pl.String:
        # Exact: polars prints a decimal at its scale. Rows that are not decimal text become
        # invalid_db_amount errors in classify.
        try:
            frame = frame.with_columns(pl.col(MONEY_COLUMN).cast(pl.String))
        except (pl.exceptions.InvalidOperationError, pl.exceptions.ComputeError) as exc:
            raise ExtractError(
                f"the extract query {source} returned {MONEY_COLUMN} as {money_dtype}; it must be exact "
                "decimal major units (a DECIMAL/numeric, an integer, or their text)"
            ) from exc
    frame = frame.with_columns(
        pl.lit(None, dtype=INVOICES[name]).alias(name)
        for name in OPTIONAL_INVOICE_COLUMNS
        if name not in frame.columns
    )
    for name, dtype in INVOICES.items():
        try:
            frame.get_column(name).cast(dtype, strict=True)
        except (pl.exceptions.InvalidOperationError, pl.exceptions.ComputeError) as exc:
            raise ExtractError(
                f"the extract query {source} returned column {name!r} as "
                f"{frame.schema[name]}, which does not convert to {dtype}"
            ) from exc
    keep = [SUMMARY_ROW_ID] if SUMMARY_ROW_ID in frame.columns else []
    columns = [*INVOICES, *keep]
    return compacted(
        conform(frame, INVOICES, "extract").select(columns).sort("invoice_id", "invoice_pk"), ("status",)
    )


COLUMN_TYPE_SQL: Final = "source_column_type.sql"
# The packaged query's money column, and the declared types that hold it exactly: numeric or
# decimal at any scale, or an integer (PostgreSQL and DuckDB spellings).
_MONEY_SOURCE: Final = ("escrow_summaries", "total_funded")
_EXACT_TYPE: Final = re.compile(
    r"(numeric|decimal)(\(\s*\d+\s*(,\s*\d+\s*)?\))?|(u?(tiny|small|big|huge)?int(eger)?)|int[248]",
    re.IGNORECASE,
)


SIDES_SQL: Final = "extract_summary_sides.sql"
SUMMARY_SIDES: Final = ("total_released", "available_amount", "stellar_ledger_sequence")


def _summary_columns(url: str) -> dict[str, str] | None:
    """The declared type of each escrow_summaries column the packaged extract reads, of those that
    exist, in one connection; None when the catalog cannot be read (a role without the right: the
    extract itself says more, and the other sides are not compared)."""
    table = _MONEY_SOURCE[0]
    columns = (_MONEY_SOURCE[1], *SUMMARY_SIDES)
    try:
        with db.connect_source(url) as conn:
            found = {column: conn.rows(db.read_sql(COLUMN_TYPE_SQL), [table, column]) for column in columns}
    except Exception as exc:
        logger.warning("the columns of %s could not be looked up: %s", table, type(exc).__name__)
        return None
    return {column: str(rows[0][0]) for column, rows in found.items() if rows and rows[0][0] is not None}


def _with_summary_sides(invoices: pl.DataFrame, url: str, settings: Settings) -> pl.DataFrame:
    """``invoices`` with what its latest escrow_summaries row says was released and is available,
    and the ledger it synced at: the scope's summary rows, joined by ``summary_row_id``."""
    try:
        with db.connect_source(url) as conn:
            table = conn.arrow(db.read_sql(SIDES_SQL), [settings.tenant_id], streamed=True)
    except Exception as exc:
        raise _extract_error(settings.redact(str(exc)), SIDES_SQL, url) from None
    sides = pl.from_arrow(_without_extensions(table))
    assert isinstance(sides, pl.DataFrame)
    sides = sides.select(
        pl.col(SUMMARY_ROW_ID).cast(pl.String),
        *(pl.col(name).cast(INVOICES[name]) for name in OPTIONAL_INVOICE_COLUMNS),
    )
    joined = invoices.drop(OPTIONAL_INVOICE_COLUMNS).join(
        sides, on=SUMMARY_ROW_ID, how="left", maintain_order="left"
    )
    return conform(joined, INVOICES, "extract").select(list(INVOICES))


def _check_money_type(declared: dict[str, str] | None) -> None:
    """Raise :class:`SourceSchemaError` when ``escrow_summaries.total_funded`` is not an exact
    number: a text column would otherwise surface as an operator error, and a float column would
    be read as if it were exact. A missing column is left to the extract, which names it."""
    table, column = _MONEY_SOURCE
    found = None if declared is None else declared.get(column)
    if found is not None and not _EXACT_TYPE.fullmatch(found.strip()):
        raise SourceSchemaError(
            table,
            column,
            f"the column's type is {found}; expected numeric or decimal (exact major units, any scale) "
            "or an integer type",
        )


def _without_extensions(table: pa.Table) -> pa.Table:
    """``table`` with extension columns as their storage. ADBC hands PostgreSQL's numeric over as
    an opaque extension over its exact text, which polars cannot cast."""
    import pyarrow as pa  # here: the CLI loads this module (stranded's OutOfScope) but never extracts

    for index, column in enumerate(table.columns):
        if isinstance(column.type, pa.BaseExtensionType):
            storage = pa.chunked_array(
                [chunk.storage for chunk in column.chunks], type=column.type.storage_type
            )
            table = table.set_column(index, table.field(index).name, storage)
    return table


SCOPE_SQL = "scope_tenants.sql"


def _check_scope(url: str, tenant_id: str | None) -> None:
    """Raise :class:`ScopeError` when an empty extract means the scope does not exist.

    A tenant with no invoice rows at all is most often a typo (``ACME`` for ``acme``), and a
    source without any invoice a wrong or empty replica: an audit of nothing must not read as
    CLEAN. A known tenant with no invoice in a reconcilable status is a real, empty scope.
    """
    try:
        with db.connect_source(url) as conn:
            ((scope_rows, known),) = conn.rows(db.read_sql(SCOPE_SQL), [tenant_id])
    except Exception as exc:  # a custom source without the documented invoices table
        logger.warning(
            "the extract found no invoice and the scope could not be checked: %s", type(exc).__name__
        )
        return
    if int(scope_rows):
        return
    if tenant_id is None:
        raise ScopeError("the source database has no invoices at all: is DATABASE_URL the right database?")
    names = (known or "").split(", ") if known else []
    listed = ", ".join(repr(name) for name in names[:10]) + (", ..." if len(names) > 10 else "")
    raise ScopeError(
        f"tenant {tenant_id!r} has no invoices in the source database"
        + (f"; its tenants are {listed}" if names else "; it has no tenant ids at all")
    )


def extract_invoices(settings: Settings) -> pl.DataFrame:
    """Every reconcilable invoice of ``settings.tenant_id`` (all tenants when None): ``INVOICES``.

    Raises :class:`SourceSchemaError` when a table or column is missing (naming both when the
    database does), and :class:`ExtractError` for any other failure, including a user query
    that does not return the documented columns.
    """
    sql, source = _query_text(settings)
    params = _tenant_params(sql, source, settings.tenant_id)
    url = settings.source_url()
    # The packaged query's columns, looked up once: the money column's type, and whether the
    # database's other sides exist.
    declared = _summary_columns(url) if settings.extract_sql_path is None else None
    _check_money_type(declared)
    started = time.perf_counter()
    try:
        with db.connect_source(url) as conn:
            table = conn.arrow(sql, params, streamed=True)
    except ReconcileAuditError:
        raise
    except Exception as exc:
        message = settings.redact(str(exc))
        # Chain the driver's error only when it holds no secret: tracebacks are printed whole.
        cause = exc if message == str(exc) else None
        raise _extract_error(message, source, url) from cause
    try:
        frame = pl.from_arrow(_without_extensions(table))
    except Exception as exc:  # an Arrow type polars cannot hold, e.g. PostgreSQL numeric
        raise ExtractError(f"the extract query {source} returned a column polars cannot read: {exc}") from exc
    assert isinstance(frame, pl.DataFrame)
    invoices = _to_invoices(frame, source)
    del table, frame  # the driver's copy: at 1M invoices about 0.5 GB of the stage's peak
    if invoices.is_empty():
        _check_scope(url, settings.tenant_id)
    elif (
        declared is not None
        and all(column in declared for column in SUMMARY_SIDES)
        and SUMMARY_ROW_ID in invoices.columns
    ):
        invoices = _with_summary_sides(invoices, url, settings)
    invoices = in_shard(invoices.select(list(INVOICES)), settings.shard)
    logger.info(
        "extract: %d invoices in %.2f s (%s, tenant %s%s)",
        invoices.height,
        time.perf_counter() - started,
        db.dialect_of(url),
        settings.tenant_id or "all",
        "" if settings.shard is None else f", shard {settings.shard}",
    )
    return invoices


OUT_OF_SCOPE_SQL: Final = "extract_out_of_scope.sql"


@dataclass(frozen=True)
class OutOfScope:
    """Invoices outside the audit whose escrow was created (``OUT_OF_SCOPE``), or why they were
    not looked for: the stranded check is then reported as not done, never as clean."""

    invoices: pl.DataFrame
    skipped: str | None = None

    @classmethod
    def not_checked(cls, why: str) -> OutOfScope:
        return cls(pl.DataFrame(schema=OUT_OF_SCOPE), why)


def extract_out_of_scope(settings: Settings) -> OutOfScope:
    """The invoices the audit leaves out (soft-deleted, or in a status outside the reconcilable
    set) that have a completed ``create``: their escrows may still hold money (the stranded check).

    Only against the packaged schema: a custom extract query describes its own scope, which this
    query cannot know. A failure here costs the stranded check, not the audit; it is logged and
    reported as not checked.
    """
    if settings.extract_sql_path is not None:
        return OutOfScope.not_checked(
            f"a custom extract query is configured ({settings.extract_sql_path.name}), and only the "
            "packaged query's scope is known"
        )
    url = settings.source_url()
    try:
        with db.connect_source(url) as conn:
            table = conn.arrow(db.read_sql(OUT_OF_SCOPE_SQL), [settings.tenant_id], streamed=True)
    except Exception as exc:
        error = _extract_error(settings.redact(str(exc)), OUT_OF_SCOPE_SQL, url)
        logger.error("stranded escrows not checked: %s", error)
        return OutOfScope.not_checked(f"the out-of-scope query failed: {error}")
    frame = pl.from_arrow(_without_extensions(table))
    assert isinstance(frame, pl.DataFrame)
    invoices = in_shard(
        conform(frame, OUT_OF_SCOPE, "extract_out_of_scope").select(list(OUT_OF_SCOPE)), settings.shard
    )
    logger.info("extract: %d out-of-scope invoices with an escrow", invoices.height)
    return OutOfScope(invoices)


ESCROW_CANDIDATES_SQL: Final = "extract_escrow_candidates.sql"
ESCROW_CANDIDATES_ALL_SQL: Final = "extract_escrow_candidates_all.sql"  # no tenant, no shard: no join


def escrow_candidates(settings: Settings) -> pl.Series | None:
    """The escrows the ledger stage will most likely read, from one narrow query run before the
    full extract (``extract_escrow_candidates.sql``; for every tenant and shard, the same without its
    join, ``extract_escrow_candidates_all.sql``): the contract of every completed ``create`` of
    the scope's invoices, in this run's shard. None when a custom extract query is configured,
    whose scope only it knows. Raises what the driver raises: the caller treats a failure as no
    head start, since the extract itself says what is wrong with the database."""
    if settings.extract_sql_path is not None:
        return None
    everything = settings.tenant_id is None and unsharded(settings.shard)
    with db.connect_source(settings.source_url()) as conn:
        if everything:
            table = conn.arrow(db.read_sql(ESCROW_CANDIDATES_ALL_SQL))
        else:
            table = conn.arrow(db.read_sql(ESCROW_CANDIDATES_SQL), [settings.tenant_id], streamed=True)
    frame = pl.from_arrow(_without_extensions(table))
    assert isinstance(frame, pl.DataFrame)
    del table
    # Trimmed as resolve trims the operation's address, so the same escrow has the same id.
    candidates = in_shard(frame, settings.shard).get_column("contract_id").str.strip_chars()
    return candidates.filter(candidates != "")


def check_source(settings: Settings) -> str:
    """What ``reconcile-audit check`` says of the source database: reachable, the extract query
    binds (every table and column it reads exists, with exact money), and how many invoices the
    scope holds. Reads no invoice row: the query runs under ``LIMIT 0``."""
    sql, source = _query_text(settings)
    url = settings.source_url()
    db.check_source_exists(url)
    if settings.extract_sql_path is None:
        _check_money_type(_summary_columns(url))
    params = _tenant_params(sql, source, settings.tenant_id)
    # Without its comments: a last line comment would otherwise swallow the wrapper's end.
    body = (db.without_comments(sql) or sql).strip().rstrip(";")
    try:
        with db.connect_source(url) as conn:
            table = conn.arrow(f"SELECT * FROM (\n{body}\n) AS extract_check LIMIT 0", params)
    except ReconcileAuditError:
        raise
    except Exception as exc:
        raise _extract_error(settings.redact(str(exc)), source, url) from None
    frame = pl.from_arrow(_without_extensions(table))
    assert isinstance(frame, pl.DataFrame)
    _to_invoices(frame, source)
    scope = f"tenant {settings.tenant_id!r}" if settings.tenant_id else "all tenants"
    try:
        with db.connect_source(url) as conn:
            ((scope_rows, _known),) = conn.rows(db.read_sql(SCOPE_SQL), [settings.tenant_id])
    except Exception:  # a custom source without the documented invoices table: no count
        return f"{redact_url(url)}: {source} binds ({scope})"
    return f"{redact_url(url)}: {source} binds; {int(scope_rows):,} invoice rows of {scope}"
