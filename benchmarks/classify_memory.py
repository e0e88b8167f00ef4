"""Benchmark: classify's memory alone, in parts and in one DuckDB query, from the same frames.

    python benchmarks/classify_memory.py --invoices 1000000 [--part-rows 250000 10000000]

The first run builds the resolved and ledger frames of e2e_bench.py's cached source of N
invoices (its emulator in a process of its own) and keeps them as Parquet in ``build/bench``.
Each ``--part-rows`` value then runs ``classify.classify`` in a fresh process, twice: with
polars' default jemalloc settings and with freed pages handed back at once (what the runner
gives the kernel). Each run samples its RSS every 20 ms. Prints ONE JSON object: per run, the
RSS before (the frames loaded), the peak, the RSS after (heap trimmed), and the seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

HANDED_BACK = "dirty_decay_ms:0,muzzy_decay_ms:0"


def frames(invoices: int, admin_url: str, data_dir: Path) -> Path:
    """The folder with resolved.parquet and ledger.parquet of N invoices, built once."""
    folder = data_dir / f"classify_frames_{invoices}"
    if (folder / "ledger.parquet").exists():
        return folder
    import e2e_bench

    from reconcile_audit.compute import extract, ledger, resolve
    from reconcile_audit.compute.settings import load_settings

    source_url, escrow_file, _planted, _built = e2e_bench.ensure_data(invoices, admin_url, data_dir)
    emulator = e2e_bench.EmulatorProcess(escrow_file, 0.0)
    try:
        settings = load_settings({"database_url": source_url, "rpc_url": emulator.url})
        invoices_frame = extract.extract_invoices(settings)
        out_of_scope = extract.extract_out_of_scope(settings)
        resolved = resolve.resolve_addresses(invoices_frame, settings.escrow_addr_by_invoice)
        read = ledger.read_ledger(
            resolve.contract_ids_to_read(resolved, out_of_scope), settings, progress=False
        )
    finally:
        emulator.stop()
    folder.mkdir(parents=True, exist_ok=True)
    resolved.write_parquet(folder / "resolved.parquet")
    read.frame.write_parquet(folder / "ledger.parquet")
    return folder


def measure(folder: Path, part_rows: int) -> None:
    """Child mode: classify the cached frames once and print one JSON line."""
    import ctypes
    import threading
    import time

    import polars as pl

    from reconcile_audit.compute import classify

    def rss() -> float:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    peak = [0.0]

    def sample() -> None:
        while True:
            peak[0] = max(peak[0], rss())
            time.sleep(0.02)

    resolved = pl.read_parquet(folder / "resolved.parquet")
    ledger = pl.read_parquet(folder / "ledger.parquet")
    trim = ctypes.CDLL("libc.so.6").malloc_trim
    trim(0)
    before = rss()
    threading.Thread(target=sample, daemon=True).start()
    started = time.perf_counter()
    findings = classify.classify(resolved, ledger, part_rows=part_rows)
    seconds = time.perf_counter() - started
    time.sleep(0.1)
    trim(0)
    print(
        json.dumps(
            {
                "part_rows": part_rows,
                "allocator": os.environ.get("_RJEM_MALLOC_CONF", "polars' default"),
                "rss_before_mb": round(before),
                "peak_mb": round(peak[0]),
                "rss_after_mb": round(rss()),
                "findings_estimated_mb": round(findings.estimated_size() / 2**20),
                "seconds": round(seconds, 2),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--invoices", type=int, default=1_000_000)
    parser.add_argument("--part-rows", type=int, nargs="+", default=[250_000, 10_000_000])
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument(
        "--data-dir", type=Path, default=Path(__file__).resolve().parent.parent / "build" / "bench"
    )
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure is not None:
        measure(args.measure, args.part_rows[0])
        return
    folder = frames(args.invoices, args.admin_url, args.data_dir)
    runs = []
    for part_rows in args.part_rows:
        for allocator in (None, HANDED_BACK):
            env = {k: v for k, v in os.environ.items() if k != "_RJEM_MALLOC_CONF"}
            if allocator:
                env["_RJEM_MALLOC_CONF"] = allocator
            done = subprocess.run(
                [sys.executable, __file__, "--measure", str(folder), "--part-rows", str(part_rows)],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(
        json.dumps({"invoices": args.invoices, "runs": runs, "load_average_1m": round(os.getloadavg()[0], 2)})
    )


if __name__ == "__main__":
    main()
