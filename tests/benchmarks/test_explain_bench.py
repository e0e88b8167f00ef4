"""The explain benchmark prints one JSON object: every finding explained, in one scan and one lookup each."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "explain_bench.py"


def test_explain_bench_prints_one_json_object_within_the_request_bound() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--findings", "30", "--background-events", "25000", "--repeats", "2"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    (line,) = done.stdout.strip().splitlines()
    report = json.loads(line)
    assert report["all_explained"]
    # One scan of the 120,960-ledger window (13 pages of 10,000 ledgers; the 25,000 events of
    # other escrows fit in them) and one getTransaction per finding.
    assert report["rpc_requests"] == 13 + 30
    assert len(report["runs"]) == 2 and report["ms_per_finding"] > 0
