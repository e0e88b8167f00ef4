"""The benchmark script still runs and prints the JSON the README documents (tiny sizes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "ledger_bench.py"


@pytest.mark.slow
def test_ledger_bench_prints_one_json_object() -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--escrows",
            "300",
            "--repeats",
            "2",
            "--per-invoice-sample",
            "40",
            "--micro-sample",
            "50",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1
    report = json.loads(lines[0])
    for key in ("batched_seconds", "per_invoice_seconds", "speedup", "entries_per_second", "peak_rss_mb"):
        assert report[key] > 0, key
    # getLatestLedger (the sweep start), 2 batches of escrows, 1 of tokens
    assert report["escrows"] == 300 and report["batched_requests"] == 4
    assert (report["per_invoice_sampled"], report["per_invoice_extrapolated"]) == (40, True)
    assert report["emulator"] == "subprocess" and report["emulator_peak_rss_mb"] > 0
    assert report["machine"]["cores"] >= 1
