"""The history benchmark runs nights of a finding's life and prints one JSON object that adds up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "history_bench.py"


def test_history_bench_prints_one_json_object_whose_states_add_up() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--invoices", "3000", "--findings", "40", "--nights", "3"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    (line,) = done.stdout.strip().splitlines()
    report = json.loads(line)
    assert report["states_add_up"] and report["all_acknowledged_last_night"]
    assert len(report["history_seconds"]) == len(report["persist_seconds"]) == 3
    assert report["last_night_states"]["acknowledged"] == 40
