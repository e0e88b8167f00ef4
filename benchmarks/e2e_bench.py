"""Benchmark: `reconcile-audit run` end to end over N invoices, as production runs it.

    python benchmarks/e2e_bench.py --invoices 1000000 [--rpc-latency-ms 50] [--repeats 3]
        [--rpc-concurrency C] [--admin-url postgresql://postgres@127.0.0.1:5432/postgres]
    [--data-dir build/bench]

Prints ONE JSON object. Each repeat:

- the source is a PostgreSQL database in the platform's schema (``reconcile_e2e_<N>_v<version>``):
  N invoices in a reconcilable status, each with an escrow_summaries row (a fixed share with a
  second, older duplicate) and a completed ``create`` operation. It is built once per N and kept:
  a repeat, or a later run of the script, only checks it (``data_build_seconds`` is null then);
- the emulator serves the matching escrows from a Parquet file (``python -m
  reconcile_audit.emulator --escrows-file``) in a process of its own, every answer delayed by
  ``--rpc-latency-ms``. A fixed share of escrows hold less than the database says (the planted
  drifts, with known deltas);
- the real ``reconcile-audit run`` (papermill, the Jupyter kernel, a fresh DuckDB state database)
  runs against both, and the resident set of the CLI and all its descendants (the kernel) is
  sampled every 0.1 s.

The JSON gives the medians and every run: wall seconds, the stages' seconds (from the run's
``metrics.prom``), peak tree RSS, the emulator's RSS, the 1-minute load average at the start of
each run, and the correctness checks: every invoice classified, every planted drift a mismatch
with its exact delta, nothing else a finding.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import polars as pl
import psutil
import psycopg
from prometheus_client.parser import text_string_to_metric_families

from reconcile_audit.compute import db
from reconcile_audit.compute.strkey import contract_id_of
from reconcile_audit.face.demo import sourcedb

ROOT = Path(__file__).resolve().parent.parent
DATA_VERSION = 1  # bump when the generated data changes: old caches are then rebuilt
PASSED_THROUGH = (
    "PYTHONPATH",
    "_RJEM_MALLOC_CONF",
    "ARROW_DEFAULT_MEMORY_POOL",
    "MALLOC_ARENA_MAX",
    "RECONCILE_RPC_EARLY_SWEEP",
)
DRIFT_EVERY = 1000  # one planted drift per this many invoices
DUPLICATE_EVERY = 200  # one duplicate (older) summary row per this many invoices
DECIMALS = 7
CENT = 10 ** (DECIMALS - 2)
TOKEN = contract_id_of(bytes(range(32)))
SAMPLE_SECONDS = 0.1
STAGE_METRIC = "escrow_reconciliation_stage_duration_seconds"


def build_data(n: int, seed: int = 11) -> tuple[dict[str, pl.DataFrame], pl.DataFrame, dict[str, int]]:
    """The three source frames, the escrows to serve, and the planted drifts (invoice id -> delta
    in base units, database minus chain)."""
    rng = random.Random(seed)
    base = datetime(2026, 11, 1, tzinfo=UTC)
    pks = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(n)]
    invoice_ids = [f"INV_{i:08d}" for i in range(n)]
    contracts = [contract_id_of(rng.randbytes(32)) for _ in range(n)]
    amount_cents = [rng.randrange(100_00, 250_000_00) for _ in range(n)]
    funded_cents = [a if rng.random() < 0.6 else rng.randrange(0, a) for a in amount_cents]
    planted: dict[str, int] = {}
    chain_funded = []
    for i, cents in enumerate(funded_cents):
        funded = cents * CENT
        if i % DRIFT_EVERY == DRIFT_EVERY // 2:
            delta = (1 + i % 5_000_00) * CENT  # the chain holds less: a shortfall of a known size
            delta = min(delta, funded) or CENT
            funded -= delta
            planted[invoice_ids[i]] = cents * CENT - funded
        chain_funded.append(funded)
    invoices = pl.DataFrame(
        {
            "id": pks,
            "invoice_id": invoice_ids,
            "tenant_id": [f"tenant-{i % 7}" for i in range(n)],
            "status": [
                "funded" if f == a else "partially_funded"
                for f, a in zip(funded_cents, amount_cents, strict=True)
            ],
            "amount": [f"{a // 100}.{a % 100:02d}" for a in amount_cents],
            "currency": ["USDC"] * n,
        }
    )
    totals = [f"{c // 100}.{c % 100:02d}" for c in funded_cents]
    summaries = pl.DataFrame({"invoice_id": pks, "total_funded": totals, "last_updated_at": [base] * n})
    duplicates = summaries.gather_every(DUPLICATE_EVERY).with_columns(
        pl.lit("0.01").alias("total_funded"), pl.lit(base - timedelta(days=3)).alias("last_updated_at")
    )
    operations = pl.DataFrame(
        {
            "invoice_id": pks,
            "operation_type": ["create"] * n,
            "contract_id": contracts,
            "status": ["completed"] * n,
            "completed_at": [base - timedelta(days=30)] * n,
        }
    )
    escrows = pl.DataFrame(
        {
            "contract_id": contracts,
            "invoice_id": invoice_ids,
            "funded_amount": [str(f) for f in chain_funded],
            "amount": [str(a * CENT) for a in amount_cents],
            "funding_target": [str(a * CENT) for a in amount_cents],
            "status": [1 if f == a else 0 for f, a in zip(funded_cents, amount_cents, strict=True)],
            "funding_token": [TOKEN] * n,
        }
    )
    source = {"invoices": invoices, "summaries": pl.concat([summaries, duplicates]), "operations": operations}
    return source, escrows, planted


def database_url(admin_url: str, name: str) -> str:
    return admin_url.rsplit("/", 1)[0] + "/" + name


def ensure_data(n: int, admin_url: str, data_dir: Path) -> tuple[str, Path, dict[str, int], float | None]:
    """The source database URL, the escrow file and the planted drifts; built when not cached."""
    name = f"reconcile_e2e_{n}_v{DATA_VERSION}"
    folder = data_dir / name
    escrow_file, planted_file, done = folder / "escrows.parquet", folder / "planted.json", folder / "done"
    url = database_url(admin_url, name)
    with psycopg.connect(admin_url, autocommit=True) as admin:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    if exists and done.exists():
        return url, escrow_file, json.loads(planted_file.read_text()), None
    started = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    source, escrows, planted = build_data(n)
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
    with db.connect(url) as conn:
        sourcedb.create_source_schema(conn)
        sourcedb.load_source_rows(conn, source["invoices"], source["summaries"], source["operations"])
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    escrows.write_parquet(escrow_file)
    planted_file.write_text(json.dumps(planted))
    done.write_text(datetime.now(UTC).isoformat())
    return url, escrow_file, planted, time.perf_counter() - started


class EmulatorProcess:
    """``python -m reconcile_audit.emulator --escrows-file`` in a process of its own."""

    def __init__(self, escrow_file: Path, latency_ms: float) -> None:
        started = time.perf_counter()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "reconcile_audit.emulator",
                "--escrows-file",
                str(escrow_file),
                "--latency-ms",
                str(latency_ms),
            ],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().strip()
        if not self.url.startswith("http"):
            raise SystemExit(f"the emulator did not start: {self.url!r}")
        self.start_seconds = time.perf_counter() - started

    def rss_mb(self) -> float:
        return psutil.Process(self.process.pid).memory_info().rss / 2**20

    def cpu_seconds(self) -> float:
        times = psutil.Process(self.process.pid).cpu_times()
        return times.user + times.system

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


def tree_rss(process: psutil.Process, cpu_by_pid: dict[int, float]) -> tuple[int, int]:
    """Resident bytes of ``process`` and all its descendants (gone ones count 0), and of
    ``process`` alone; records each one's CPU seconds so far in ``cpu_by_pid``."""
    total = own = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            with member.oneshot():
                rss = member.memory_info().rss
                times = member.cpu_times()
        except psutil.Error:
            continue
        total += rss
        own = rss if member is process else own
        cpu_by_pid[member.pid] = times.user + times.system
    return total, own


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine has spent busy (not idle, not waiting on I/O)."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def run_once(
    source_url: str,
    rpc_url: str,
    out_dir: Path,
    concurrency: int | None,
    arguments: tuple[str, ...] = ("run",),
) -> dict[str, Any]:
    """One `reconcile-audit run` (or ``arguments``: a shard, the merge), its wall time and peak
    tree RSS."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", str(out_dir)),
        "DATABASE_URL": source_url,
        "SOROBAN_RPC_URL": rpc_url,
        "RECONCILE_STATE_DATABASE_URL": f"duckdb:///{out_dir / 'state.duckdb'}",
    }
    # Another checkout's code, or allocator settings, to compare side by side.
    env.update({name: os.environ[name] for name in PASSED_THROUGH if name in os.environ})
    if concurrency is not None:
        env["RECONCILE_RPC_CONCURRENCY"] = str(concurrency)
    command = [
        str(Path(sys.executable).parent / "reconcile-audit"),
        *arguments,
        "--output-dir",
        str(out_dir / "runs"),
    ]
    load = os.getloadavg()[0]
    busy = machine_busy_seconds()
    cpu_by_pid: dict[int, float] = {}
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    watched = psutil.Process(process.pid)
    peak = cli_peak = 0
    samples: list[tuple[float, int]] = []  # (epoch seconds, tree RSS), for the peak of each stage
    output: list[bytes] = []
    reader = threading.Thread(target=lambda: output.append(process.stdout.read() if process.stdout else b""))
    reader.start()
    while process.poll() is None:
        rss, cli_rss = tree_rss(watched, cpu_by_pid)
        peak, cli_peak = max(peak, rss), max(cli_peak, cli_rss)
        samples.append((time.time(), rss))
        time.sleep(SAMPLE_SECONDS)
    wall = time.perf_counter() - started
    busy = machine_busy_seconds() - busy
    reader.join()
    return {
        "exit_code": process.returncode,
        "wall_seconds": round(wall, 2),
        # What the CLI and the kernel used (each as last sampled, within 0.1 s of its end), and
        # the share of the machine's cores busy meanwhile (PostgreSQL and the emulator included).
        "tree_cpu_seconds": round(sum(cpu_by_pid.values()), 1),
        "machine_busy_share": round(busy / ((os.cpu_count() or 1) * wall), 2),
        "peak_tree_rss_mb": round(peak / 2**20, 1),
        "peak_cli_rss_mb": round(cli_peak / 2**20, 1),
        "load_average_1m": round(load, 2),
        "output_tail": b"".join(output).decode(errors="replace")[-2000:],
        "samples": samples,
    }


def by_stage(samples: list[tuple[float, int]], events: Path) -> dict[str, dict[str, float]]:
    """Tree RSS (MB) while each stage ran, from the run's ``stage X started`` records: its first
    sample (what the stage starts with) and its peak."""
    starts: list[tuple[float, str]] = []
    if not events.exists():  # the run failed before its kernel logged anything
        return {}
    for line in events.read_text(encoding="utf-8").splitlines():
        event = json.loads(line)
        if event.get("stage") and event.get("message", "").startswith("stage "):
            starts.append((datetime.fromisoformat(event["time"]).timestamp(), event["stage"]))
    peaks: dict[str, float] = {}
    firsts: dict[str, float] = {}
    for moment, rss in samples:
        running = [stage for started, stage in starts if started <= moment]
        stage = running[-1] if running else "start"
        peaks[stage] = max(peaks.get(stage, 0.0), round(rss / 2**20, 1))
        firsts.setdefault(stage, round(rss / 2**20, 1))
    return {"peak": peaks, "first": firsts}


def stage_seconds(metrics_file: Path) -> dict[str, float]:
    stages: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_file.read_text()):
        for sample in family.samples:
            if sample.name == STAGE_METRIC:
                stages[sample.labels["stage"]] = round(sample.value, 2)
    return stages


def check(run_dir: Path, n: int, planted: dict[str, int], *, merged: bool = False) -> dict[str, Any]:
    """The run's results against what was planted: every invoice classified, every drift found
    with its exact delta, nothing else a finding. A merge holds its findings, not every row: its
    count of invoices comes from its summary alone."""
    results = pl.read_parquet(
        run_dir / "results.parquet", columns=["invoice_id", "class", "delta_base_units"]
    )
    findings = results.filter(pl.col("class") != "match")
    found = {row[0]: row[2] for row in findings.iter_rows()}
    exact = sum(1 for invoice, delta in planted.items() if found.get(invoice) == str(delta))
    summary = json.loads((run_dir / "summary.json").read_text())
    return {
        "total": summary["total"],
        "every_invoice_classified": (merged or results.height == n) and summary["total"] == n,
        "planted": len(planted),
        "planted_found_exact": exact,
        "other_findings": findings.height - sum(1 for invoice in planted if invoice in found),
        "status": summary["status"],
        "ok": (merged or results.height == n)
        and summary["total"] == n
        and exact == len(planted)
        and findings.height == len(planted),
    }


def sharded_run(
    source_url: str, rpc_url: str, scratch: Path, concurrency: int | None, count: int
) -> dict[str, Any]:
    """The N shards one after another, then the merge: each part's wall and peak, and their sums."""
    key = "all:bench"
    parts = [
        run_once(
            source_url,
            rpc_url,
            scratch,
            concurrency,
            ("run", "--run-key", key, "--shard", f"{index}/{count}"),
        )
        for index in range(count)
    ]
    parts.append(run_once(source_url, rpc_url, scratch, concurrency, ("merge", "--run-key", key)))
    for part in parts:
        part.pop("samples")
    return {
        "exit_code": parts[-1]["exit_code"],
        "wall_seconds": round(sum(part["wall_seconds"] for part in parts), 2),
        "peak_tree_rss_mb": max(part["peak_tree_rss_mb"] for part in parts),
        "tree_cpu_seconds": round(sum(part["tree_cpu_seconds"] for part in parts), 1),
        "machine_busy_share": round(
            sum(part["machine_busy_share"] * part["wall_seconds"] for part in parts)
            / sum(part["wall_seconds"] for part in parts),
            2,
        ),
        "load_average_1m": parts[0]["load_average_1m"],
        "output_tail": parts[-1]["output_tail"],
        "parts": [
            {name: part[name] for name in ("exit_code", "wall_seconds", "peak_tree_rss_mb")} for part in parts
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--invoices", type=int, required=True)
    parser.add_argument("--rpc-latency-ms", type=float, default=0.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--rpc-concurrency", type=int, default=None, help="RECONCILE_RPC_CONCURRENCY; default: the tool's"
    )
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "build" / "bench")
    parser.add_argument(
        "--shards",
        type=int,
        default=0,
        help="Run the N shards one after another (`run --shard I/N`), then `merge`; wall is their sum.",
    )
    args = parser.parse_args()

    source_url, escrow_file, planted, build_seconds = ensure_data(
        args.invoices, args.admin_url, args.data_dir
    )
    emulator = EmulatorProcess(escrow_file, args.rpc_latency_ms)
    runs: list[dict[str, Any]] = []
    try:
        for _ in range(args.repeats):
            scratch = Path(tempfile.mkdtemp(prefix="reconcile-e2e-"))
            emulator_cpu = emulator.cpu_seconds()
            try:
                if args.shards:
                    run = sharded_run(source_url, emulator.url, scratch, args.rpc_concurrency, args.shards)
                    run_dir = max((scratch / "runs").iterdir())  # the merge: the last folder made
                else:
                    run = run_once(source_url, emulator.url, scratch, args.rpc_concurrency)
                    run_dir = next((scratch / "runs").iterdir())
                    stages = by_stage(run.pop("samples"), run_dir / "run.jsonl")
                    run["peak_rss_mb_by_stage"], run["first_rss_mb_by_stage"] = (
                        stages["peak"],
                        stages["first"],
                    )
                run["stage_seconds"] = stage_seconds(run_dir / "metrics.prom")
                run["checks"] = check(run_dir, args.invoices, planted, merged=bool(args.shards))
                run["emulator_rss_mb"] = round(emulator.rss_mb(), 1)
                # Two decimals: the kernel counts CPU in ticks of 10 ms, and a small run's emulator
                # spends well under a tenth of a second.
                run["emulator_cpu_seconds"] = round(emulator.cpu_seconds() - emulator_cpu, 2)
                if run["checks"]["ok"]:
                    del run["output_tail"]
                runs.append(run)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
    finally:
        emulator.stop()
    stages = sorted({name for run in runs for name in run["stage_seconds"]})
    report = {
        "invoices": args.invoices,
        "shards": args.shards or None,
        "rpc_latency_ms": args.rpc_latency_ms,
        "rpc_concurrency": args.rpc_concurrency,
        "repeats": args.repeats,
        "wall_seconds": statistics.median(run["wall_seconds"] for run in runs),
        "peak_tree_rss_mb": statistics.median(run["peak_tree_rss_mb"] for run in runs),
        "tree_cpu_seconds": statistics.median(run["tree_cpu_seconds"] for run in runs),
        "machine_busy_share": statistics.median(run["machine_busy_share"] for run in runs),
        "stage_seconds": {
            name: statistics.median(run["stage_seconds"].get(name, 0.0) for run in runs) for name in stages
        },
        "emulator_rss_mb": max(run["emulator_rss_mb"] for run in runs),
        "emulator_start_seconds": round(emulator.start_seconds, 1),
        "data_build_seconds": None if build_seconds is None else round(build_seconds, 1),
        "all_checks_ok": all(run["checks"]["ok"] for run in runs),
        "runs": runs,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        },
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
