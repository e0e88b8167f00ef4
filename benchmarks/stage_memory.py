"""Benchmark: where the ledger and classify stages' memory goes, phase by phase, in one process.

    python benchmarks/stage_memory.py --invoices 1000000 [--duckdb-memory-limit 600MB]

Uses e2e_bench.py's cached source of N invoices (run that once first) and its emulator. Runs
extract, resolve, the ledger read and classify in this process, as the kernel does, with the
heap trimmed between stages, and samples this process's RSS every 50 ms, recording the peak of
each phase: the ledger reader's helpers (the sweep, ``_frame``, ``_with_balances``) and
classify's (its DuckDB query until ``pl.from_arrow``, the sentences, the sort back into row
order). Prints ONE JSON object: the peak MB of each phase in order, and each stage's seconds.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import duckdb
import e2e_bench
import polars as pl
import psutil

from reconcile_audit.compute import classify, extract, ledger, resolve
from reconcile_audit.compute.ledger import batched
from reconcile_audit.compute.settings import load_settings


class Phases:
    """The current phase's name, and each phase's peak RSS, sampled by a thread."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.current = "start"
        self.peaks: dict[str, float] = {}
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while True:
            rss = self.process.memory_info().rss / 2**20
            self.peaks[self.current] = max(self.peaks.get(self.current, 0.0), round(rss, 1))
            time.sleep(0.05)

    def enter(self, name: str) -> None:
        time.sleep(0.1)  # the last sample of the phase before
        self.current = name

    def around(self, module: Any, name: str) -> None:
        """Name a phase after ``module.name`` while it runs (async functions too)."""
        original: Callable[..., Any] = getattr(module, name)
        phases = self

        if original.__code__.co_flags & 0x80:  # a coroutine function

            async def wrapped_async(*args: Any, **kwargs: Any) -> Any:
                before = phases.current
                phases.enter(name)
                try:
                    return await original(*args, **kwargs)
                finally:
                    phases.enter(before)

            setattr(module, name, wrapped_async)
        else:

            def wrapped(*args: Any, **kwargs: Any) -> Any:
                before = phases.current
                phases.enter(name)
                try:
                    return original(*args, **kwargs)
                finally:
                    phases.enter(before)

            setattr(module, name, wrapped)


def trim() -> None:
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--invoices", type=int, required=True)
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--data-dir", type=Path, default=e2e_bench.ROOT / "build" / "bench")
    parser.add_argument("--duckdb-memory-limit", default=None, help="SET memory_limit for classify's query")
    args = parser.parse_args()
    source_url, escrow_file, _planted, _built = e2e_bench.ensure_data(
        args.invoices, args.admin_url, args.data_dir
    )

    phases = Phases()
    for name in ("_read_rest", "_read_tokens", "_read_balances", "_frame", "_with_balances"):
        phases.around(batched, name)
    for name in ("_reasons", "_with_drift_ranks"):
        phases.around(classify, name)
    from_arrow = pl.from_arrow

    def from_arrow_after_query(*args: Any, **kwargs: Any) -> Any:
        phases.enter("classify: from_arrow and after")
        return from_arrow(*args, **kwargs)

    pl.from_arrow = from_arrow_after_query  # type: ignore[assignment]
    if args.duckdb_memory_limit:
        connect = duckdb.connect

        def limited(*a: Any, **k: Any) -> duckdb.DuckDBPyConnection:
            conn = connect(*a, **k)
            conn.execute(f"SET memory_limit='{args.duckdb_memory_limit}'")
            return conn

        classify.duckdb.connect = limited  # type: ignore[attr-defined]

    emulator = e2e_bench.EmulatorProcess(escrow_file, 0.0)
    seconds: dict[str, float] = {}
    try:
        os.environ["DATABASE_URL"] = source_url
        os.environ["SOROBAN_RPC_URL"] = emulator.url
        settings = load_settings({})
        clock = time.perf_counter()
        phases.enter("extract")
        invoices = extract.extract_invoices(settings)
        out_of_scope = extract.extract_out_of_scope(settings)
        phases.enter("resolve")
        resolved = resolve.resolve_addresses(invoices, settings.escrow_addr_by_invoice)
        seconds["extract and resolve"] = round(time.perf_counter() - clock, 2)
        trim()
        phases.enter("ledger: the sweep")
        clock = time.perf_counter()
        read = ledger.read_ledger(
            resolve.contract_ids_to_read(resolved, out_of_scope), settings, progress=False
        )
        seconds["ledger"] = round(time.perf_counter() - clock, 2)
        trim()
        phases.enter("classify: inputs and DuckDB query")
        clock = time.perf_counter()
        # As the notebook runs it: the plain matches spooled to disk, only the other rows held.
        spool = Path(tempfile.mkdtemp(prefix="stage-memory-")) / ".spool"
        result = classify.audit(resolved, read, settings, out_of_scope=out_of_scope, spool=spool)
        shutil.rmtree(spool.parent)
        seconds["classify"] = round(time.perf_counter() - clock, 2)
        phases.enter("done")
        time.sleep(0.2)
        assert result.counts.total == args.invoices
    finally:
        emulator.stop()
    print(
        json.dumps(
            {
                "invoices": args.invoices,
                "duckdb_memory_limit": args.duckdb_memory_limit,
                "peak_rss_mb_by_phase": phases.peaks,
                "seconds": seconds,
                "load_average_1m": round(os.getloadavg()[0], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
