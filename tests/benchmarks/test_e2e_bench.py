"""The end-to-end benchmark runs the real `reconcile-audit run` and checks what it planted (tiny N)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.services import admin_execute

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "e2e_bench.py"


@pytest.mark.slow
def test_e2e_bench_prints_one_json_object_with_every_check_passing(pg_server: str, tmp_path: Path) -> None:
    try:
        report = _run(pg_server, tmp_path)
    finally:
        admin_execute('DROP DATABASE IF EXISTS "reconcile_e2e_2000_v1"')
    assert report["all_checks_ok"], report
    (run,) = report["runs"]
    assert run["exit_code"] == 1  # the planted drifts are findings
    assert run["checks"]["planted"] == run["checks"]["planted_found_exact"] == 2
    assert {"extract", "resolve", "ledger", "classify"} <= set(report["stage_seconds"])
    assert report["peak_tree_rss_mb"] > 100 and report["wall_seconds"] > 0
    # The kernel's CPU is counted: importing polars and running the notebook alone take seconds.
    assert report["tree_cpu_seconds"] > 1 and 0 < report["machine_busy_share"] <= 1
    assert run["emulator_cpu_seconds"] > 0
    assert report["data_build_seconds"] is not None  # a new data folder: built, not cached


def _run(pg_server: str, tmp_path: Path) -> dict:
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--invoices",
            "2000",
            "--repeats",
            "1",
            "--rpc-latency-ms",
            "5",
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
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout
    return json.loads(lines[0])
