"""Connections to the two kinds of database: PostgreSQL (ADBC, Arrow-native) and DuckDB files.

Both speak DB-API with ``$1`` placeholders and return Arrow tables, so the stages above hold one
code path. Values are always bound, never formatted into SQL by this program: where PostgreSQL must
see a literal (``Connection.arrow(..., streamed=True)``), the value is bound to the server's own
``quote_nullable`` and the literal it returns goes in the placeholder's place.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import duckdb
import polars as pl

from reconcile_audit.errors import ConfigError
from reconcile_audit.resources import SQL_DIR

if TYPE_CHECKING:
    import pyarrow as pa

Dialect = Literal["postgres", "duckdb"]


def dialect_of(url: str) -> Dialect:
    if url.startswith(("postgresql://", "postgres://")):
        return "postgres"
    if url.startswith("duckdb://"):
        return "duckdb"
    raise ConfigError("DATABASE_URL", "expected postgresql://... or duckdb:///path")


def duckdb_path(url: str) -> str:
    """``duckdb:///abs/path`` -> ``/abs/path``; ``duckdb://rel/path`` -> ``rel/path``; ``duckdb://:memory:``."""
    rest = url[len("duckdb://") :]
    return rest or ":memory:"


class Connection:
    """A thin wrapper that gives both backends the same four calls."""

    def __init__(self, raw: Any, dialect: Dialect) -> None:
        self.raw = raw
        self.dialect = dialect

    def arrow(self, sql: str, params: Sequence[Any] = (), *, streamed: bool = False) -> pa.Table:
        """Run one query and return its whole result as an Arrow table.

        ``streamed`` (text or NULL parameters only) is for results of a million rows. ADBC reads
        a PostgreSQL result through ``COPY ... TO STDOUT``, batch by batch, but COPY takes no
        parameters: a query with bound ones comes back as one libpq result held whole before it
        is converted (apache/arrow-adbc#2024). Fetching the extract's 1M invoices that way peaked
        547 MB over the process's start, against 60 MB copied. So the server quotes each value
        itself (``quote_nullable``, bound) and its literal replaces the placeholder: the query has
        no parameters left, and is copied.
        """
        if self.dialect == "duckdb":
            # A relation streams straight to Arrow; a DB-API result would copy every row once more.
            return self.raw.sql(sql, params=list(params) or None).to_arrow_table()
        if streamed and params and (inlined := self._with_literals(sql, params)) is not None:
            sql, params = inlined, ()
        with self.raw.cursor() as cursor:
            cursor.execute(sql, tuple(params) if params else None)
            return cursor.fetch_arrow_table()

    def frame(self, sql: str, params: Sequence[Any] = ()) -> pl.DataFrame:
        """Run one query and return its whole result as a polars frame."""
        if self.dialect == "duckdb":
            # Through the Arrow C stream, without pyarrow: the CLI reads its state database so,
            # and importing pyarrow for a lease row cost it 100 MB for the whole run.
            return pl.DataFrame(self.raw.sql(sql, params=list(params) or None))
        frame = pl.from_arrow(self.arrow(sql, params))
        assert isinstance(frame, pl.DataFrame)
        return frame

    def _with_literals(self, sql: str, params: Sequence[str | None]) -> str | None:
        """``sql`` with each ``$n`` placeholder replaced by the server's literal of ``params[n-1]``;
        None when that cannot be done safely, and the values stay bound."""
        if any(value is not None and not isinstance(value, str) for value in params):
            raise TypeError("streamed queries take text or NULL parameters only")
        spans = placeholders(sql)
        if spans is None or any(number > len(params) for _, _, number in spans):
            return None  # bound as they are: the server refuses the query as it would have
        quoted = ", ".join(f"quote_nullable(CAST(${index} AS TEXT))" for index in range(1, len(params) + 1))
        # The placeholders were found by the rules of standard conforming strings.
        ((conforming, *literals),) = self.rows(
            f"SELECT current_setting('standard_conforming_strings') = 'on', {quoted}", params
        )
        if not conforming:
            return None
        pieces: list[str] = []
        end = 0
        for start, stop, number in spans:
            pieces += [sql[end:start], literals[number - 1]]
            end = stop
        return "".join([*pieces, sql[end:]])

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        if self.dialect == "duckdb":
            # DuckDB 2 refuses new work on a connection that holds an unfinished result.
            self.raw.execute(sql, list(params)).fetchall()
            return
        with self.raw.cursor() as cursor:
            cursor.execute(sql, tuple(params) if params else None)

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        if self.dialect == "duckdb":
            return self.raw.execute(sql, list(params)).fetchall()
        with self.raw.cursor() as cursor:
            cursor.execute(sql, tuple(params) if params else None)
            return cursor.fetchall()

    def commit(self) -> None:
        self.raw.commit()

    def rollback(self) -> None:
        self.raw.rollback()

    def close(self) -> None:
        self.raw.close()


def open_connection(url: str, *, read_only: bool = False, autocommit: bool = False) -> Connection:
    dialect = dialect_of(url)
    if dialect == "duckdb":
        path = duckdb_path(url)
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        return Connection(duckdb.connect(path, read_only=read_only), "duckdb")
    # Imported here: ADBC loads pyarrow's datasets (70 MB), which the CLI, opening only the state
    # database, never needs.
    import adbc_driver_postgresql.dbapi as pg

    normalized = "postgresql://" + url.split("://", 1)[1]
    return Connection(pg.connect(normalized, autocommit=autocommit), "postgres")


@contextmanager
def connect(url: str, *, read_only: bool = False, autocommit: bool = False) -> Iterator[Connection]:
    connection = open_connection(url, read_only=read_only, autocommit=autocommit)
    try:
        yield connection
    finally:
        connection.close()


# libpq words the cause last: '... connection to server at "h", port 5432 failed: FATAL:  database
# "x" does not exist'. The part after the last "failed:" is what an operator needs.
_CONNECT_FAILED: Final = re.compile(
    r"Failed to connect|could not connect|connection to server", re.IGNORECASE
)
_LAST_CAUSE: Final = re.compile(r".*failed:\s*(?P<cause>.+)$", re.DOTALL)


def connection_cause(message: str) -> str | None:
    """The real cause of a failed connection, in one line ("database "x" does not exist"), or
    None when ``message`` is not about connecting."""
    if not _CONNECT_FAILED.search(message):
        return None
    match = _LAST_CAUSE.match(message)
    return " ".join((match["cause"] if match else message).replace("FATAL:", "").split())


def check_source_exists(url: str) -> None:
    """A DuckDB source is an existing file: a mistyped path must not become a new, empty database
    (which the state database, when it is the same URL, would otherwise create)."""
    if dialect_of(url) == "duckdb":
        path = duckdb_path(url)
        if path == ":memory:" or not Path(path).is_file():
            raise ConfigError("DATABASE_URL", f"no DuckDB database file at {path!r}")


@contextmanager
def connect_source(url: str) -> Iterator[Connection]:
    """A connection to the audited database that cannot write to it.

    DuckDB opens the file read-only, and a path that does not exist is an error, not a new empty
    database. On PostgreSQL every statement of the session runs in a READ ONLY transaction, so even
    a data-modifying query slipped into a custom extract file is refused by the server.
    """
    if dialect_of(url) == "duckdb":
        check_source_exists(url)
        connection = Connection(duckdb.connect(duckdb_path(url), read_only=True), "duckdb")
    else:
        connection = open_connection(url, autocommit=True)
        connection.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
    try:
        yield connection
    finally:
        connection.close()


# PostgreSQL's lexical rules (sql-syntax-lexical), as far as finding placeholders needs them: what
# may hold "$1" without being one (comments, quoted strings and identifiers, dollar-quoted bodies,
# identifiers, which may contain "$"), and the placeholders themselves.
_LEXEME: Final = re.compile(
    r"""
    (?P<line_comment>--[^\n]*)
    | (?P<block_comment>/\*)
    | (?P<escape_string>[eE]')
    | (?P<quoted>['"])
    | (?P<dollar_quote>\$(?:[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_\x80-\U0010ffff]*)?\$)
    | (?P<placeholder>\$[0-9]+)
    | (?P<word>[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_$\x80-\U0010ffff]*|[0-9][A-Za-z0-9_.]*)
    """,
    re.VERBOSE,
)
_BLOCK_COMMENT_PART: Final = re.compile(r"/\*|\*/")
_ESCAPE_STRING_BODY: Final = re.compile(r"(?:[^'\\]|\\.|'')*'", re.DOTALL)


def _lexemes(sql: str) -> list[tuple[str, int, int]] | None:
    """The ``(kind, start, end)`` of every comment (``comment``), quoted string, quoted identifier
    or dollar-quoted body (``quoted``) and ``$n`` placeholder (``placeholder``) of PostgreSQL
    ``sql`` (standard conforming strings), in order; None when one of them is not closed."""
    found: list[tuple[str, int, int]] = []
    position = 0
    while (match := _LEXEME.search(sql, position)) is not None:
        kind = match.lastgroup
        end = match.end()
        if kind == "block_comment":  # comments nest
            depth = 1
            while depth:
                part = _BLOCK_COMMENT_PART.search(sql, end)
                if part is None:
                    return None
                depth += 1 if part.group() == "/*" else -1
                end = part.end()
        elif kind == "escape_string":
            body = _ESCAPE_STRING_BODY.match(sql, end)
            if body is None:
                return None
            end = body.end()
        elif kind in ("quoted", "dollar_quote"):
            # To the closing quote. A doubled quote inside scans as two strings side by side,
            # which hold the same text, placeholders none.
            closing = sql.find(match.group(), end)
            if closing < 0:
                return None
            end = closing + len(match.group())
        if kind != "word":
            found.append((_LEXEME_KINDS[str(kind)], match.start(), end))
        position = end
    return found


# What each of _LEXEME's groups (a word aside) is to the callers.
_LEXEME_KINDS: Final = {
    "line_comment": "comment",
    "block_comment": "comment",
    "escape_string": "quoted",
    "quoted": "quoted",
    "dollar_quote": "quoted",
    "placeholder": "placeholder",
}


def placeholders(sql: str) -> list[tuple[int, int, int]] | None:
    """The ``(start, end, n)`` of every ``$n`` placeholder in PostgreSQL ``sql`` (standard
    conforming strings), skipping comments, strings, quoted identifiers and dollar-quoted bodies;
    None when one of those is not closed."""
    lexemes = _lexemes(sql)
    if lexemes is None:
        return None
    return [(start, end, int(sql[start + 1 : end])) for kind, start, end in lexemes if kind == "placeholder"]


def without_comments(sql: str, *, quoted_as: str | None = None) -> str | None:
    """``sql`` with each comment replaced by a space, and with ``quoted_as``, each quoted string,
    quoted identifier and dollar-quoted body by that text: what a check of the statement itself
    reads (by the rules of :func:`placeholders`). None when one of them is not closed."""
    lexemes = _lexemes(sql)
    if lexemes is None:
        return None
    pieces: list[str] = []
    end = 0
    for kind, start, stop in lexemes:
        if kind == "comment" or (kind == "quoted" and quoted_as is not None):
            pieces += [sql[end:start], " " if kind == "comment" else str(quoted_as)]
            end = stop
    return "".join([*pieces, sql[end:]])


def read_sql(name: str) -> str:
    """The text of ``reconcile_audit/sql/<name>``."""
    return (SQL_DIR / name).read_text(encoding="utf-8")
