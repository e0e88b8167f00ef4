"""The database layer: PostgreSQL queries streamed through COPY give what bound parameters give."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconcile_audit.compute import db

# --- placeholders: PostgreSQL's lexical rules, as far as "$n" goes ------------------------------


@pytest.mark.parametrize(
    ("sql", "numbers"),
    [
        ("SELECT $1", [1]),
        ("SELECT $10, $1", [10, 1]),
        ("SELECT '$1', $2", [2]),
        ("SELECT 'it''s $1', $2", [2]),
        ("SELECT E'it\\'s $1', $2", [2]),  # a backslash escapes a quote in an escape string only
        ("SELECT e'\\\\', $2", [2]),
        ('SELECT "col $1", "a""$1", $3', [3]),
        ("SELECT $$ $1 $$, $tag$ $1 $$ $tag$, $2", [2]),
        ("SELECT a$1, x$$1, $3", [3]),  # identifiers may hold "$"
        ("SELECT 1 -- $1\n, $2", [2]),
        ("SELECT /* /* $1 */ $2 */ $3", [3]),  # block comments nest
        ("SELECT U&'d\\0061t$1', B'101', $4", [4]),
        ("SELECT CAST($1 AS TEXT)::text, $2::int", [1, 2]),
    ],
)
def test_placeholders_are_found_outside_strings_comments_and_identifiers(
    sql: str, numbers: list[int]
) -> None:
    found = db.placeholders(sql)
    assert found is not None
    assert [number for _, _, number in found] == numbers
    assert all(sql[start:end] == f"${number}" for start, end, number in found)


@pytest.mark.parametrize(
    "sql", ["SELECT 'open", 'SELECT "open', "SELECT E'open\\'", "SELECT $t$ open", "SELECT /* /* */ open"]
)
def test_an_unclosed_string_comment_or_body_finds_nothing(sql: str) -> None:
    assert db.placeholders(sql) is None


@pytest.mark.parametrize(
    ("sql", "code", "statement"),
    [
        ("SELECT 1 -- a; b\n", "SELECT 1  \n", "SELECT 1  \n"),
        ("SELECT 'a--b; c', $$;$$, \"x;y\"", "SELECT 'a--b; c', $$;$$, \"x;y\"", "SELECT '', '', ''"),
        ("SELECT /* /* ; */ -- */ 1", "SELECT   1", "SELECT   1"),
        ("SELECT E'it\\'s; --', 2", "SELECT E'it\\'s; --', 2", "SELECT '', 2"),
    ],
)
def test_without_comments_keeps_the_statement_and_can_blank_its_quoted_text(
    sql: str, code: str, statement: str
) -> None:
    assert db.without_comments(sql) == code
    assert db.without_comments(sql, quoted_as="''") == statement


def test_without_comments_gives_nothing_for_an_unclosed_quote() -> None:
    assert db.without_comments("SELECT 'open; DROP TABLE invoices") is None


# --- streamed queries against the real server ------------------------------------------------------


@pytest.fixture(scope="module")
def source(pg_server: str) -> Iterator[db.Connection]:
    with db.connect_source(pg_server) as conn:
        yield conn


class _Spy:
    """Records what each cursor executes, on the real driver."""

    def __init__(self, conn: db.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
        self.executed: list[tuple[str, Any]] = []
        raw_cursor = conn.raw.cursor

        def cursor(*args: Any, **kwargs: Any) -> Any:
            real = raw_cursor(*args, **kwargs)
            execute = real.execute

            def recorded(sql: str, params: Any = None) -> Any:
                self.executed.append((sql, params))
                return execute(sql, params)

            real.execute = recorded
            return real

        monkeypatch.setattr(conn.raw, "cursor", cursor)


_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
_VALUES = st.one_of(
    st.none(), _TEXT, st.sampled_from(["$1", "'", "\\", "''", "--", "/*", "*/", "$$", "e'x'"])
)


@st.composite
def _queries(draw: st.DrawFn) -> tuple[str, list[str | None]]:
    """A SELECT whose items mix placeholders with strings, identifiers, bodies and comments that
    spell "$1" without being one; and its text parameters."""
    values = draw(st.lists(_VALUES, min_size=1, max_size=3))
    words = st.lists(
        st.sampled_from(["a", "$1", "$2", "'", "\\", '"', "--", "/*", "*/", " ", "\n", "$"]), max_size=8
    ).map("".join)
    # Every value used once at least: a bound parameter the query does not use is an error.
    kinds = [f"param {number}" for number in range(1, len(values) + 1)]
    kinds += draw(
        st.lists(st.sampled_from(["param", "string", "escape", "dollar", "comment", "block"]), max_size=5)
    )
    items: list[str] = []
    for index, kind in enumerate(draw(st.permutations(kinds))):
        text = draw(words)
        if kind.startswith("param"):
            number = int(kind.split()[1]) if " " in kind else draw(st.integers(1, len(values)))
            item = f"CAST(${number} AS TEXT)"
        elif kind == "string":
            item = "'" + text.replace("'", "''") + "'"
        elif kind == "escape":
            item = "E'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
        elif kind == "dollar":
            item = "$q$" + text.replace("$q$", "") + "$q$"
        elif kind == "comment":
            item = "'c' -- " + text.replace("\n", " ") + "\n"
        else:
            inside = text.replace("*/", "").replace("/*", "")
            item = f"'b' /* {inside} /* {inside} */ {inside} */"  # block comments nest
        items.append(f'{item} AS "c{index}$1"')
    return "SELECT " + ", ".join(items), values


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_queries())
def test_a_streamed_query_returns_what_the_bound_one_returns(
    source: db.Connection, case: tuple[str, list[str | None]]
) -> None:
    sql, values = case
    assert source.arrow(sql, values, streamed=True).equals(source.arrow(sql, values))


def test_a_streamed_query_goes_to_the_driver_without_parameters(
    source: db.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = _Spy(source, monkeypatch)
    sql = "SELECT CAST($1 AS TEXT) AS tenant, '$1' AS text, CAST($1 AS TEXT) IS NULL AS everyone"
    table = source.arrow(sql, ["o'hara\\\n-- x"], streamed=True)
    assert table.to_pylist() == [{"tenant": "o'hara\\\n-- x", "text": "$1", "everyone": False}]
    (query, params) = spy.executed[-1]
    assert params is None and "$1" not in query.replace("'$1'", "")


@pytest.mark.parametrize(
    "name",
    [
        "extract_invoices.sql",
        "extract_summary_sides.sql",
        "extract_out_of_scope.sql",
        "extract_escrow_candidates.sql",
    ],
)
def test_every_packaged_extract_query_can_be_streamed(source: db.Connection, name: str) -> None:
    sql = db.read_sql(name)
    found = db.placeholders(sql)
    assert found and {number for _, _, number in found} == {1}
    inlined = source._with_literals(sql, ["acme"])
    assert inlined is not None and db.placeholders(inlined) == []


def test_without_standard_conforming_strings_the_values_stay_bound(
    pg_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with db.connect_source(pg_server) as conn:
        conn.execute("SET standard_conforming_strings = off")
        spy = _Spy(conn, monkeypatch)
        table = conn.arrow("SELECT CAST($1 AS TEXT) AS tenant", ["a\\'b"], streamed=True)
        assert table.to_pylist() == [{"tenant": "a\\'b"}]
        assert spy.executed[-1][1] == ("a\\'b",)


def test_only_text_or_null_is_streamed(source: db.Connection) -> None:
    with pytest.raises(TypeError, match="text or NULL"):
        source.arrow("SELECT $1", [1], streamed=True)
