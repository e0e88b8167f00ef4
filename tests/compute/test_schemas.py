"""How frames hold their values: a few distinct long strings stored once."""

from __future__ import annotations

import polars as pl

from reconcile_audit.compute.schemas import stored_once

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
