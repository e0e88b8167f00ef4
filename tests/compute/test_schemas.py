"""How frames hold their values: a few distinct long strings stored once."""

from __future__ import annotations

import polars as pl

from reconcile_audit.compute.schemas import chunked_like, compacted, filled_at, stored_once

TOKEN = "C" + "A" * 55


def arrow_bytes(series: pl.Series) -> int:
    """The bytes of every buffer the column holds (polars' estimate counts each view's string)."""
    return pl.DataFrame({series.name: series}).to_arrow(compat_level=pl.CompatLevel.newest()).nbytes


def test_stored_once_keeps_every_value_and_null_in_order() -> None:
    values = [TOKEN, None, TOKEN + "B", "short", TOKEN, None] * 5
    series = pl.Series("funding_token", values)
    shared = stored_once(series)
    assert shared.name == "funding_token" and shared.dtype == pl.String
    assert shared.to_list() == values
    assert stored_once(pl.Series("empty", [], dtype=pl.String)).to_list() == []


def test_stored_once_stores_each_distinct_value_once_and_lets_the_copies_go() -> None:
    rows = 100_000
    series = pl.Series("funding_token", [TOKEN + str(i % 3) for i in range(rows)])
    assert arrow_bytes(series) > rows * (16 + 56)  # a view and a copy of the string per row
    shared = stored_once(series)
    # A view per row, three strings: none of the original buffers is kept alive.
    assert arrow_bytes(shared) < rows * 16 + 4096
    assert shared.equals(series)


def test_chunked_like_cuts_a_column_into_the_frames_chunks_without_a_copy() -> None:
    frame = pl.concat([pl.DataFrame({"a": [1, 2]}), pl.DataFrame({"a": [3]})], rechunk=False)
    column = pl.Series("b", [10, 20, 30])
    cut = chunked_like(column, frame)
    assert cut.chunk_lengths() == [2, 1] and cut.to_list() == [10, 20, 30]
    assert frame.with_columns(cut).n_chunks("all") == [2, 2]
    one = pl.DataFrame({"a": [1, 2, 3]})
    assert chunked_like(column, one) is column  # already aligned: the very series


def test_filled_at_puts_values_at_their_rows_in_the_frames_chunks() -> None:
    frame = pl.concat([pl.DataFrame({"a": [1, 2]}), pl.DataFrame({"a": [3, 4]})], rechunk=False)
    column = filled_at(frame, pl.Series([3, 0], dtype=pl.UInt32), pl.Series("rank", [7, 9]))
    assert column.name == "rank" and column.dtype == pl.Int64
    assert column.to_list() == [9, None, None, 7] and column.chunk_lengths() == [2, 2]
    empty = filled_at(frame, pl.Series([], dtype=pl.UInt32), pl.Series("id", [], dtype=pl.String))
    assert empty.dtype == pl.String and empty.null_count() == 4


def test_compacted_keeps_every_value_and_holds_an_all_null_column_as_one_null() -> None:
    rows = 50_000
    parts = [
        pl.DataFrame(
            {
                "token": [TOKEN + str(i % 2) for i in range(start, start + rows)],
                "note": pl.Series([None] * rows, dtype=pl.String),
                "ledger": pl.Series([None] * rows, dtype=pl.Int64),
                "amount": [str(i) for i in range(start, start + rows)],
            }
        )
        for start in (0, rows)
    ]
    frame = pl.concat(parts, rechunk=False)
    compact = compacted(frame, ("token",))
    assert compact.equals(frame) and compact.schema == frame.schema
    # The null columns take no memory per row; the token is stored once; the chunks stay the
    # frame's, so that the next operation does not copy every column into one.
    # Polars counts a scalar column once, not per row (and no null string view either way).
    assert compact.select("ledger").estimated_size() < 100 < frame.select("ledger").estimated_size()
    assert arrow_bytes(compact.get_column("token")) < arrow_bytes(frame.get_column("token")) // 3
    assert compact.get_column("token").chunk_lengths() == [rows, rows]
    assert compact.get_column("amount").chunk_lengths() == [rows, rows]
    assert compacted(frame.clear()).is_empty()
