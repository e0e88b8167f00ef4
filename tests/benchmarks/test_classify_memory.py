"""The classify memory benchmark measures classify in parts and whole, with both allocator settings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.services import admin_execute

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "classify_memory.py"


@pytest.mark.slow
def test_classify_memory_prints_each_variant(pg_server: str, tmp_path: Path) -> None:
    try:
        done = subprocess.run(
            [
                *(sys.executable, str(BENCH), "--invoices", "1200", "--part-rows", "300", "5000"),
                *("--admin-url", pg_server, "--data-dir", str(tmp_path)),
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        )
    finally:
        admin_execute('DROP DATABASE IF EXISTS "reconcile_e2e_1200_v1"')
    (line,) = done.stdout.strip().splitlines()
    runs = json.loads(line)["runs"]
    assert [run["part_rows"] for run in runs] == [300, 300, 5000, 5000]
    assert runs[1]["allocator"].endswith("dirty_decay_ms:0,muzzy_decay_ms:0")
    assert all(run["peak_mb"] >= run["rss_before_mb"] > 50 for run in runs)
