"""The run's result with its plain matches spooled to disk (issue 14): what it answers must be
what the result holding every row answers."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import polars as pl
import pytest

from reconcile_audit.compute.result import AuditResult
from reconcile_audit.compute.schemas import ClassCounts
from tests import factories
from tests.factories import finding, frame


def rows() -> pl.DataFrame:
    return frame(
        [
            finding("A1", tenant_id="acme", chain_balance_base_units="5", db_ledger_sequence=7),
            finding("A2", "mismatch", tenant_id="acme"),
            finding("B1", tenant_id="beta", flags=["duplicate_summary"]),
            finding("B2", tenant_id="beta", chain_balance_base_units="9"),
            finding("N1", tenant_id=None),
            finding("B3", "error", tenant_id="beta"),
            finding("A3", tenant_id="acme"),
        ]
    )


def test_a_spooled_result_counts_and_narrows_as_one_holding_every_row(tmp_path: Path) -> None:
    whole = AuditResult.of(rows())
    held, spool = factories.spooled(rows(), tmp_path / "spool", part_rows=3)
    spooled = AuditResult.of(held, spool=spool)
    assert held.get_column("invoice_id").to_list() == ["A2", "B1", "B3"]
    assert not spooled.holds_every_row and spooled.knows_every_class
    assert (spooled.counts, spooled.tallies) == (whole.counts, whole.tallies)
    assert pl.concat(spool.every_row(held)).equals(whole.findings)
    for tenant in ("acme", "beta", "nobody"):
        mine, theirs = spooled.for_tenant(tenant), whole.for_tenant(tenant)
        assert mine is not None and theirs is not None
        assert (mine.counts, mine.tallies) == (theirs.counts, theirs.tallies), tenant
        assert mine.findings.equals(theirs.findings.filter(pl.col("invoice_id").is_in(["A2", "B1", "B3"])))


def test_a_spooled_result_finds_the_class_of_a_spooled_match(tmp_path: Path) -> None:
    held, spool = factories.spooled(rows(), tmp_path / "spool", part_rows=2)
    result = AuditResult.of(held, spool=spool)
    found = result.classes_of(pl.Series(["A1", "A2", "GONE"])).sort("invoice_id")
    assert found.rows() == [("A1", "match"), ("A2", "mismatch")]


def test_held_rows_that_do_not_match_the_spool_are_refused(tmp_path: Path) -> None:
    held, spool = factories.spooled(rows(), tmp_path / "spool", part_rows=4)
    with pytest.raises(ValueError, match="the held rows"):  # a non-match lost on the way
        AuditResult.of(held.filter(pl.col("invoice_id") != "A2"), spool=spool)
    with pytest.raises(ValueError, match="the spool"):
        AuditResult(held, AuditResult.of(rows()).counts, spool=replace(spool, counts=ClassCounts.zero()))
