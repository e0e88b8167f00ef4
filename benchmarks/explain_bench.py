"""Benchmark: the explain stage (issue 12) for K findings against an RPC in its own process.

    python benchmarks/explain_bench.py --findings 500 [--background-events 100000]
        [--rpc-latency-ms 0] [--repeats 3]

Prints ONE JSON object. The emulator (a subprocess: a real RPC is another process, and an
in-process one would share the client's interpreter lock) serves K escrows, each with one fund
that landed while the database marks it failed, and ``--background-events`` events of 1,000
other escrows spread over the whole retention window (120,960 ledgers): the noise a topic-filtered
scan has to page through. The database (DuckDB, in a temporary folder) holds the K invoices and
their operations. Each repeat runs ``explain.explain_findings`` over the K findings, with the
database's last sync at the start of the window, so the scan covers all of it.

``seconds`` is the median wall time, ``ms_per_finding`` that divided by K, ``rpc_requests`` the
getEvents pages plus the getTransaction lookups (the issue's bound: one scan plus K lookups),
``all_explained`` whether every finding came out ``explained``. The 1-minute load average is
recorded with each run: these machines are shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import polars as pl
from stellar_sdk import StrKey

from reconcile_audit.compute import db, explain
from reconcile_audit.compute.schemas import FINDINGS
from reconcile_audit.compute.settings import load_settings
from reconcile_audit.emulator import Emulator, FaultPlan, LedgerState
from reconcile_audit.emulator.activity import (
    ChainEvent,
    ChainTransaction,
    escrow_event_xdr,
    escrow_transaction,
)
from reconcile_audit.emulator.state import TESTNET
from reconcile_audit.face.demo import sourcedb

LATEST = 5_000_000
WINDOW = 120_960
UNIT = 10**7
BACKGROUND_ESCROWS = 1_000


def contract(n: int, salt: bytes = b"escrow") -> str:
    return StrKey.encode_contract(salt[:8].ljust(8, b"\0") + n.to_bytes(24, "big"))


def investor() -> str:
    return StrKey.encode_ed25519_public_key(bytes(31) + b"\x01")


def state_for(findings: int, background: int) -> LedgerState:
    """K landed funds (one per finding escrow) and ``background`` events of other escrows."""
    landed = tuple(
        escrow_transaction(
            "escrow_funded",
            contract_id=contract(n),
            invoice_id=f"INV_{n}",
            ledger=LATEST - 1_000 - n,
            network_passphrase=TESTNET,
            function="fund",
            investor=investor(),
            amount=UNIT,
            funded_amount=101 * UNIT,
            status=1,
        )
        for n in range(findings)
    )
    # One topic and datum for every background event: they are noise, only their number matters.
    topic, value = escrow_event_xdr(
        "escrow_funded", invoice_id="OTHER", investor=investor(), amount=UNIT, funded_amount=UNIT, status=0
    )
    rng = random.Random(7)
    others = [contract(n, b"other") for n in range(BACKGROUND_ESCROWS)]
    noise = tuple(
        ChainEvent(
            LATEST - WINDOW + 1 + rng.randrange(WINDOW - 2_000),
            1,
            0,
            0,
            rng.choice(others),
            "00" * 32,
            topic,
            value,
        )
        for _ in range(background)
    )
    # The noise rides on a transaction of its own so the state carries it; it has no envelope.
    carrier = ChainTransaction("ff" * 32, LATEST - WINDOW + 1, 1, True, "", noise) if noise else None
    return LedgerState(
        latest_ledger=LATEST,
        escrows=(),
        transactions=landed + ((carrier,) if carrier else ()),
    )


def serve(findings: int, background: int, latency_ms: float) -> None:
    """Child mode: serve the state, print the URL, stop when stdin closes."""
    plan = (
        FaultPlan(
            rate=1.0,
            kinds=("delay",),
            delay_seconds=latency_ms / 1000,
            methods=("getEvents", "getTransaction", "getHealth"),
        )
        if latency_ms
        else None
    )
    with Emulator(state_for(findings, background), plan) as emulator:
        print(emulator.url, flush=True)
        sys.stdin.read()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}), flush=True)


def source(url: str, findings: int, hashes: list[str]) -> None:
    pks = [f"00000000-0000-4000-8000-{n:012d}" for n in range(findings)]
    with db.connect(url) as conn:
        sourcedb.create_source_schema(conn)
        sourcedb.load_source_rows(
            conn,
            pl.DataFrame(
                {
                    "id": pks,
                    "invoice_id": [f"INV_{n}" for n in range(findings)],
                    "status": ["funded"] * findings,
                }
            ),
            pl.DataFrame({"invoice_id": pks, "total_funded": ["100.00"] * findings}),
            pl.DataFrame(
                {
                    "invoice_id": pks,
                    "operation_type": ["fund"] * findings,
                    "status": ["failed"] * findings,
                    "stellar_transaction_hash": hashes,
                }
            ),
        )


def findings_frame(findings: int) -> pl.DataFrame:
    rows = [
        {
            "invoice_id": f"INV_{n}",
            "contract_id": contract(n),
            "class": "mismatch",
            "reason_code": "chain_over_db",
            "db_funded_base_units": str(100 * UNIT),
            "chain_funded_base_units": str(101 * UNIT),
            "delta_base_units": str(-UNIT),
            "drift_rank": 1,
            "token_decimals": 7,
            "currency": "USDC",
            "db_total_funded": "100.00",
            "flags": [],
            "db_ledger_sequence": LATEST - WINDOW,
        }
        for n in range(findings)
    ]
    return pl.DataFrame(rows, schema=FINDINGS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--findings", type=int, default=500)
    parser.add_argument("--background-events", type=int, default=100_000)
    parser.add_argument("--rpc-latency-ms", type=float, default=0.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.findings, args.background_events, args.rpc_latency_ms)
        return
    hashes = [t.tx_hash for t in state_for(args.findings, 0).transactions]
    started = time.perf_counter()
    child = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--serve",
            "--findings",
            str(args.findings),
            "--background-events",
            str(args.background_events),
            "--rpc-latency-ms",
            str(args.rpc_latency_ms),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    url = child.stdout.readline().strip()
    emulator_start = time.perf_counter() - started
    runs = []
    with tempfile.TemporaryDirectory() as folder:
        database = f"duckdb://{Path(folder) / 'source.duckdb'}"
        source(database, args.findings, hashes)
        settings = load_settings(
            {"database_url": database, "rpc_url": url}, {"RECONCILE_EXPLAIN_MAX": str(args.findings)}
        )
        frame = findings_frame(args.findings)
        for _ in range(args.repeats):
            began = time.perf_counter()
            explained = explain.explain_findings(frame, settings)
            seconds = time.perf_counter() - began
            runs.append(
                {
                    "seconds": round(seconds, 3),
                    "rpc_requests": explained.rpc_requests,
                    "counts": explained.counts(),
                    "timeline_rows": explained.events.height,
                    "load_average_1m": os.getloadavg()[0],
                }
            )
    child.stdin.close()
    tail = child.stdout.read()
    child.wait(timeout=60)
    emulator_rss = next(
        (json.loads(line)["peak_rss_mb"] for line in tail.splitlines() if line.startswith("{")), None
    )
    median = statistics.median(run["seconds"] for run in runs)
    print(
        json.dumps(
            {
                "findings": args.findings,
                "background_events": args.background_events,
                "rpc_latency_ms": args.rpc_latency_ms,
                "repeats": args.repeats,
                "seconds": median,
                "ms_per_finding": round(median * 1000 / max(args.findings, 1), 3),
                "rpc_requests": runs[0]["rpc_requests"],
                "lookups": args.findings,
                "all_explained": all(run["counts"]["explained"] == args.findings for run in runs),
                "emulator_start_seconds": round(emulator_start, 1),
                "emulator_rss_mb": emulator_rss,
                "runs": runs,
                "machine": {
                    "cpu": platform.machine(),
                    "cores": os.cpu_count(),
                    "python": platform.python_version(),
                },
            }
        )
    )


if __name__ == "__main__":
    main()
