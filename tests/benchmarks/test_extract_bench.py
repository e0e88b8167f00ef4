"""Smoke test of benchmarks/extract_bench.py on a tiny data set against the real PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import adbc_driver_postgresql.dbapi as pg
import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "extract_bench.py"


@pytest.mark.postgres
def test_extract_bench_reads_every_row_three_ways_and_drops_its_database(pg_server: str) -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH), "--invoices", "2000", "--repeats", "1", "--admin-url", pg_server],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)

    for key in (
        "invoices",
        "repeats",
        "bulk_seconds",
        "copy_seconds",
        "seed_keyset_seconds",
        "bulk_vs_seed_speedup",
        "bulk_vs_copy_ratio",
        "rows_per_second_bulk",
        "peak_rss_mb",
        "seed_keyset_extrapolated",
        "machine",
    ):
        assert key in report, key
    assert report["invoices"] == 2000
    assert set(report["machine"]) >= {"cpu", "cores", "python", "postgres_server", "load_average"}

    # About 85% of the synthetic invoices are reconcilable and not deleted.
    expected = report["reconcilable_rows"]
    assert 1500 < expected < 1900
    assert report["bulk_rows"] == [expected]
    assert report["copy_rows"] == [expected]
    # The seed's LEFT JOIN repeats an invoice per duplicate summary row, so it returns more rows;
    # a duplicate straddling a page boundary loses its second row to the keyset cursor.
    assert expected < report["seed_rows"][0] <= report["seed_rows_expected"]
    assert report["seed_keyset_extrapolated"] is False
    assert report["seed_pages_timed"] is None

    with pg.connect(pg_server) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_database WHERE datname = $1", (report["database"],))
        assert cursor.fetchone() == (0,)


@pytest.mark.postgres
def test_extract_bench_says_when_it_extrapolated_the_seed_scan(pg_server: str) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--invoices",
            "2500",
            "--repeats",
            "1",
            "--seed-max-seconds",
            "0",
            "--admin-url",
            pg_server,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["seed_keyset_extrapolated"] is True
    assert report["seed_pages_timed"] == 1
    assert report["seed_pages"] == [1]
    assert report["seed_rows"] == [1000]
