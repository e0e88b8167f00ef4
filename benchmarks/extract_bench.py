"""Benchmark: the bulk extract against a plain COPY and against the seed's keyset scan.

    python benchmarks/extract_bench.py --invoices 200000 [--repeats 3] [--seed-max-seconds S]
        [--admin-url postgresql://postgres@127.0.0.1:5432/postgres]

Creates a fresh PostgreSQL database, loads N synthetic invoices (with escrow summaries, some
of them duplicates, and escrow operations) through ``sourcedb.load_source_rows``, measures the
three ways of reading them in the same run, prints ONE JSON object and drops the database,
whatever happened.

- ``bulk_seconds``: ``extract.extract_invoices(settings)``: the project's one ADBC Arrow query
  (``sql/extract_invoices.sql``, ``$1`` bound to NULL), into a polars ``INVOICES`` frame.
- ``copy_seconds``: ``COPY (<the same query>) TO STDOUT (FORMAT csv)`` through psycopg, every
  byte read and nothing parsed: the floor for moving these rows out of the server.
- ``seed_keyset_seconds``: the seed PR's keyset scan (``seed_keyset_page.sql``, 1000 rows a
  page, the seed's clamp maximum), one round trip per page, rows fetched to Python tuples. With
  ``--seed-max-seconds`` a run stops after that long and its time is scaled linearly to all
  pages; the JSON then says ``seed_keyset_extrapolated: true`` and ``seed_pages_timed``. The
  first pages cost the most, so an extrapolated time overstates the scan (see the README).

Each is timed ``--repeats`` times, round-robin so that a busy moment hits all three alike, after
one untimed warm-up extract so all of them read from a warm buffer cache; the medians are
reported. Connecting is part of every timing. The data is generated and loaded in a child
process, so ``peak_rss_mb`` is the peak resident set of the measuring process alone.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import re
import resource
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import adbc_driver_postgresql.dbapi as adbc_pg
import polars as pl
import psycopg

from reconcile_audit.compute import db
from reconcile_audit.compute.extract import EXTRACT_SQL, extract_invoices
from reconcile_audit.compute.settings import load_settings
from reconcile_audit.face.demo import sourcedb

HERE = Path(__file__).resolve().parent
SEED_PAGE_SQL = HERE / "seed_keyset_page.sql"
SEED_PAGE_SIZE = 1000  # the seed clamps its page size to at most 1000
NIL_UUID = uuid.UUID(int=0)
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"

RECONCILABLE = ("linked_escrow", "funded", "partially_funded")
# About 85% of invoices are in a reconcilable state, like a platform with some history.
STATUS_WEIGHTS = {
    "linked_escrow": 30,
    "funded": 35,
    "partially_funded": 20,
    "draft": 5,
    "settled": 7,
    "cancelled": 3,
}
_TENANT_PARAMETER = re.compile(r"\$1(?!\d)")
_BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


def _money(cents: int) -> str:
    # Text, not float: load_source_rows refuses float money.
    return f"{cents // 100}.{cents % 100:02d}"


def synthetic_frames(n: int, seed: int) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """N invoices; ~95% with a summary row (1% of those duplicated, 0.5% NULL totals); ~97% with a
    completed ``create`` operation, plus some ``fund`` and failed ``create`` rows."""
    rng = random.Random(seed)
    now = datetime(2026, 11, 1, tzinfo=UTC)
    statuses = rng.choices(list(STATUS_WEIGHTS), weights=list(STATUS_WEIGHTS.values()), k=n)
    ids = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(n)]
    deleted = [now - timedelta(days=rng.randrange(1, 300)) if rng.random() < 0.02 else None for _ in range(n)]
    invoices = pl.DataFrame(
        {
            "id": ids,
            "invoice_id": [f"INV_{i:08d}" for i in range(n)],
            "tenant_id": [f"tenant_{i % 17:02d}" for i in range(n)],
            "status": statuses,
            "amount": [_money(rng.randrange(10_000, 100_000_000)) for _ in range(n)],
            "currency": ["USDC"] * n,
            "deleted_at": pl.Series(deleted, dtype=pl.Datetime("us", "UTC")),
        }
    )
    s_invoice, s_total, s_updated = [], [], []
    o_invoice, o_type, o_contract, o_status, o_completed = [], [], [], [], []
    for pk in ids:
        if rng.random() < 0.95:
            rows = 2 if rng.random() < 0.01 else 1
            for k in range(rows):
                s_invoice.append(pk)
                s_total.append(None if rng.random() < 0.005 else _money(rng.randrange(0, 50_000_000)))
                s_updated.append(now - timedelta(minutes=rng.randrange(1, 500_000) + 1000 * k))
        if rng.random() < 0.97:
            contract = "C" + "".join(rng.choices(_BASE32, k=55))
            o_invoice.append(pk)
            o_type.append("create")
            o_contract.append(contract)
            o_status.append("completed")
            o_completed.append(now - timedelta(minutes=rng.randrange(1, 500_000)))
            if rng.random() < 0.3:
                o_invoice.append(pk)
                o_type.append("fund")
                o_contract.append(contract)
                o_status.append("completed")
                o_completed.append(now - timedelta(minutes=rng.randrange(1, 500_000)))
        elif rng.random() < 0.5:
            o_invoice.append(pk)
            o_type.append("create")
            o_contract.append(None)
            o_status.append("failed")
            o_completed.append(None)
    summaries = pl.DataFrame(
        {
            "invoice_id": s_invoice,
            "total_funded": pl.Series(s_total, dtype=pl.String),
            "last_updated_at": pl.Series(s_updated, dtype=pl.Datetime("us", "UTC")),
        }
    )
    operations = pl.DataFrame(
        {
            "invoice_id": o_invoice,
            "operation_type": o_type,
            "contract_id": pl.Series(o_contract, dtype=pl.String),
            "status": o_status,
            "completed_at": pl.Series(o_completed, dtype=pl.Datetime("us", "UTC")),
        }
    )
    return invoices, summaries, operations


def load(url: str, n: int, seed: int) -> None:
    """Child mode: generate and load the data, print what the parent needs to check rows."""
    started = time.perf_counter()
    invoices, summaries, operations = synthetic_frames(n, seed)
    generated = time.perf_counter()
    with db.connect(url) as conn:
        sourcedb.create_source_schema(conn)
        sourcedb.load_source_rows(conn, invoices, summaries, operations)
    loaded = time.perf_counter()
    reconcilable = invoices.filter(pl.col("status").is_in(RECONCILABLE) & pl.col("deleted_at").is_null())
    per_invoice = summaries.group_by("invoice_id").len()
    # The seed's LEFT JOIN yields one row per summary row, or one row when there is none.
    seed_rows = (
        reconcilable.join(per_invoice, left_on="id", right_on="invoice_id", how="left")
        .select(pl.col("len").fill_null(1).sum())
        .item()
    )
    print(
        json.dumps(
            {
                "reconcilable": reconcilable.height,
                "seed_rows": int(seed_rows),
                "summary_rows": summaries.height,
                "duplicate_summary_invoices": int((per_invoice["len"] > 1).sum()),
                "operation_rows": operations.height,
                "generate_seconds": round(generated - started, 3),
                "load_seconds": round(loaded - generated, 3),
            }
        ),
        flush=True,
    )


def time_bulk(url: str) -> tuple[float, int]:
    settings = load_settings({"database_url": url}, {})
    started = time.perf_counter()
    frame = extract_invoices(settings)
    return time.perf_counter() - started, frame.height


def copy_sql() -> str:
    # COPY takes no bound parameters, so the extract's $1 (the tenant id) becomes the literal
    # NULL, which is exactly what extract_invoices binds for "every tenant". No value is
    # formatted into the SQL.
    query = _TENANT_PARAMETER.sub("NULL", db.read_sql(EXTRACT_SQL))
    return f"COPY ({query}\n) TO STDOUT (FORMAT csv)"


def time_copy(url: str, statement: str) -> tuple[float, int, int]:
    """Seconds, rows and bytes. PostgreSQL sends one CopyData message per row on COPY TO, and
    psycopg yields one chunk per message, so chunks count rows without parsing the CSV."""
    started = time.perf_counter()
    nbytes = rows = 0
    with (
        psycopg.connect(url, autocommit=True) as conn,
        conn.cursor() as cursor,
        cursor.copy(statement) as copy,
    ):
        for chunk in copy:
            nbytes += len(chunk)
            rows += 1
    return time.perf_counter() - started, rows, nbytes


def time_seed_keyset(url: str, sql: str, max_seconds: float | None, expected_rows: int) -> dict[str, object]:
    """The seed's scan: page after page until a short page, each page one round trip."""
    # RawCursor speaks $1 placeholders, like node-postgres; no prepared statements, because
    # knex over node-postgres sends each query unnamed.
    started = time.perf_counter()
    rows = pages = 0
    stopped_early = False
    with psycopg.connect(url, autocommit=True, prepare_threshold=None) as conn:
        cursor = psycopg.RawCursor(conn)
        last = NIL_UUID
        while True:
            cursor.execute(sql, (last, SEED_PAGE_SIZE))
            page = cursor.fetchall()
            pages += 1
            rows += len(page)
            if len(page) < SEED_PAGE_SIZE:
                break
            last = page[-1][0]
            if max_seconds is not None and time.perf_counter() - started > max_seconds:
                stopped_early = True
                break
        cursor.close()
    elapsed = time.perf_counter() - started
    if not stopped_early:
        return {"seconds": elapsed, "rows": rows, "pages": pages, "extrapolated": False}
    # Every page re-walks escrow_summaries and the invoices table, but also hashes and sorts every
    # invoice after the cursor, so the first pages are the dearest: scaling them to all pages
    # overstates the whole scan (750k: 218 s extrapolated from 25% of pages, 163 s measured).
    total_pages = max(pages, math.ceil(expected_rows / SEED_PAGE_SIZE))
    return {
        "seconds": elapsed * total_pages / pages,
        "rows": rows,
        "pages": pages,
        "extrapolated": True,
    }


def machine_facts(url: str) -> dict[str, object]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    with psycopg.connect(url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    load1, load5, load15 = os.getloadavg()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "postgres_server": row[0] if row else None,
        "polars": pl.__version__,
        "adbc_driver_postgresql": metadata.version("adbc-driver-postgresql"),
        "psycopg": psycopg.__version__,
        "load_average": [round(load1, 2), round(load5, 2), round(load15, 2)],
    }


def _admin_execute(admin_url: str, sql: str) -> None:
    with adbc_pg.connect(admin_url, autocommit=True) as conn, conn.cursor() as cursor:
        cursor.execute(sql)


def run(args: argparse.Namespace) -> dict[str, object]:
    name = f"extract_bench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    url = f"{args.admin_url.rsplit('/', 1)[0]}/{name}"
    _admin_execute(args.admin_url, f'CREATE DATABASE "{name}"')
    try:
        child = subprocess.run(
            [
                sys.executable,
                __file__,
                "--load",
                url,
                "--invoices",
                str(args.invoices),
                "--seed",
                str(args.seed),
            ],
            check=True,
            stdout=subprocess.PIPE,
            text=True,
        )
        loaded = json.loads(child.stdout.strip().splitlines()[-1])
        expected = loaded["reconcilable"]
        statement = copy_sql()
        seed_sql = SEED_PAGE_SQL.read_text(encoding="utf-8")

        _, warm_rows = time_bulk(url)
        if warm_rows != expected:
            raise RuntimeError(f"extract returned {warm_rows} rows, expected {expected}")
        bulk, copies, seeds = [], [], []
        for _ in range(args.repeats):
            bulk.append(time_bulk(url))
            copies.append(time_copy(url, statement))
            seeds.append(time_seed_keyset(url, seed_sql, args.seed_max_seconds, loaded["seed_rows"]))

        bulk_seconds = statistics.median(seconds for seconds, _ in bulk)
        copy_seconds = statistics.median(seconds for seconds, _, _ in copies)
        seed_seconds = statistics.median(float(run["seconds"]) for run in seeds)  # type: ignore[arg-type]
        extrapolated = any(run["extrapolated"] for run in seeds)
        return {
            "invoices": args.invoices,
            "repeats": args.repeats,
            "bulk_seconds": round(bulk_seconds, 4),
            "copy_seconds": round(copy_seconds, 4),
            "seed_keyset_seconds": round(seed_seconds, 3),
            "bulk_vs_seed_speedup": round(seed_seconds / bulk_seconds, 1),
            "bulk_vs_copy_ratio": round(bulk_seconds / copy_seconds, 2),
            "rows_per_second_bulk": round(expected / bulk_seconds),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "reconcilable_rows": expected,
            "bulk_rows": [rows for _, rows in bulk],
            "copy_rows": [rows for _, rows, _ in copies],
            "copy_bytes": copies[0][2] if copies else None,
            "seed_rows": [run["rows"] for run in seeds],
            "seed_rows_expected": loaded["seed_rows"],
            "seed_page_size": SEED_PAGE_SIZE,
            "seed_pages": [run["pages"] for run in seeds],
            "seed_keyset_extrapolated": extrapolated,
            "seed_pages_timed": min(int(run["pages"]) for run in seeds) if extrapolated else None,  # type: ignore[call-overload]
            "bulk_runs": [round(seconds, 4) for seconds, _ in bulk],
            "copy_runs": [round(seconds, 4) for seconds, _, _ in copies],
            "seed_keyset_runs": [round(float(run["seconds"]), 3) for run in seeds],  # type: ignore[arg-type]
            "data": {key: loaded[key] for key in loaded if key not in ("reconcilable", "seed_rows")},
            "database": name,
            "machine": machine_facts(url),
        }
    finally:
        _admin_execute(args.admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--invoices", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed-max-seconds", type=float, default=None)
    parser.add_argument("--seed", type=int, default=7, help="random seed of the synthetic data")
    parser.add_argument(
        "--admin-url", default=os.environ.get("RECONCILE_TEST_PG_ADMIN_URL", DEFAULT_ADMIN_URL)
    )
    parser.add_argument("--load", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.repeats < 1 or args.invoices < 1:
        parser.error("--invoices and --repeats must be at least 1")
    if args.load:
        load(args.load, args.invoices, args.seed)
        return
    print(json.dumps(run(args), indent=2))


if __name__ == "__main__":
    main()
