from __future__ import annotations

import logging

import pytest

from reconcile_audit.compute.amounts import major_units
from reconcile_audit.output.emit import emit_findings
from tests.factories import finding, frame, mismatch, realistic_rows


def test_one_warning_per_mismatch_with_the_seeds_fields(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.emit")
    findings = frame(realistic_rows())
    with caplog.at_level(logging.WARNING, logger="test.emit"):
        emitted = emit_findings(findings, logger=logger)
    assert emitted == 3 == len(caplog.records)
    assert all(r.levelno == logging.WARNING for r in caplog.records)
    by_id = {r.invoiceId: r for r in caplog.records}  # type: ignore[attr-defined]
    assert set(by_id) == {"INV-2026-10001", "INV-2026-10002", "INV-2026-10003"}
    record = by_id["INV-2026-10001"]
    assert record.dbFundedTotal == "1250.00"  # type: ignore[attr-defined]
    assert record.onChainAmount == "1249.9900000"  # type: ignore[attr-defined]
    assert record.onChainBaseUnits == "12499900000"  # type: ignore[attr-defined]
    assert record.deltaBaseUnits == "100000"  # type: ignore[attr-defined]
    message = record.getMessage()
    for text in ("invoiceId='INV-2026-10001'", "dbFundedTotal=1250.00", "onChainAmount=1249.9900000"):
        assert text in message


def test_no_mismatch_no_log(caplog: pytest.LogCaptureFixture) -> None:
    findings = frame([finding("A"), finding("B", "error", reason="bad id")])
    with caplog.at_level(logging.WARNING):
        assert emit_findings(findings) == 0
    assert not [r for r in caplog.records if r.name == "reconcile_audit.findings"]


def test_hostile_id_cannot_forge_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    hostile = "X\nERROR forged line"
    findings = frame([mismatch(hostile, 100, 5, reason="DB 1.00\nvs chain")])
    with caplog.at_level(logging.WARNING):
        assert emit_findings(findings) == 1
    message = caplog.records[0].getMessage()
    assert "\n" not in message
    assert caplog.records[0].invoiceId == hostile  # type: ignore[attr-defined]  # the data stays exact


def test_major_units_is_exact_at_the_i128_limits() -> None:
    low = str(-(2**127))
    assert major_units(low, 7) == "-17014118346046923173168730371588.4105728"
    assert major_units(str(2**127 - 1), 0) == str(2**127 - 1)
    assert major_units(None, 7) is None
    assert major_units("12", None) is None
    assert major_units("not a number", 2) is None
