"""The stage memory benchmark runs extract to classify in one process and names each phase's peak."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.services import admin_execute

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "stage_memory.py"


@pytest.mark.slow
def test_stage_memory_prints_the_peak_of_every_phase(pg_server: str, tmp_path: Path) -> None:
    try:
        done = subprocess.run(
            [
                sys.executable,
                str(BENCH),
                "--invoices",
                "1500",
                "--admin-url",
                pg_server,
                "--data-dir",
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        )
    finally:
        admin_execute('DROP DATABASE IF EXISTS "reconcile_e2e_1500_v1"')
    (line,) = done.stdout.strip().splitlines()
    report = json.loads(line)
    phases = report["peak_rss_mb_by_phase"]
    for phase in (
        "extract",
        "ledger: the sweep",
        "_frame",
        "_with_balances",
        "classify: inputs and DuckDB query",
        "classify: from_arrow and after",
        "_reasons",
        "_with_drift_ranks",
    ):
        assert phases[phase] > 50, phases
    assert set(report["seconds"]) == {"extract and resolve", "ledger", "classify"}
