"""Benchmark: the batched ledger reader against the seed's per-invoice simulate path.

    python benchmarks/ledger_bench.py --escrows 20000 [--repeats 3] [--per-invoice-sample 0]
        [--emulator subprocess|inprocess] [--balances]

Prints ONE JSON object. Both paths read the SAME emulator state (``synthetic_state(N, seed)``)
in the same run:

- ``batched_seconds``: median wall time of ``read_ledger`` (getLedgerEntries, 200 keys a batch,
  ``--concurrency`` in flight, then the token's METADATA), over ``--repeats`` runs.
- ``per_invoice_seconds``: wall time of ``read_ledger_simulated(..., with_funding_token=False)``:
  one ``simulateTransaction`` of ``get_escrow`` per invoice, in sequence, as the seed did. With
  ``--per-invoice-sample n`` only a random sample of n invoices is timed and the time is scaled
  linearly to N; the JSON then says so (``per_invoice_sampled: n``, ``per_invoice_extrapolated``).
- ``speedup`` = per_invoice_seconds / batched_seconds.

With ``--balances`` every escrow is custodial and holds its tokens, so the batched reader also
reads each escrow's Balance entry beside its instance (issue 11): ``batched_seconds`` is that
read, and ``batched_without_balances_seconds`` the same sweep told by
``RECONCILE_CUSTODIAL_WASM_HASHES`` that no escrow is custodial, measured in the same run.
``per_invoice_with_balances_seconds`` is the per-invoice path reading the same facts (a simulated
``balance(escrow)`` after each ``get_escrow``), and ``speedup_like_for_like`` the batched reader's
speedup over it; ``speedup`` stays the comparison with the escrow-only per-invoice path.

By default the emulator runs in a subprocess: a real RPC is another process, and on a 2-core
machine an in-process emulator would share the client's GIL and count its own JSON and lookup
work against the reader. ``--emulator inprocess`` measures that variant too.
``peak_rss_mb`` is the client process's peak resident set; the emulator's is reported apart.
``*_client_cpu_seconds`` are the client process's CPU time: on a busy machine the wall times also
count waiting for a core, so the JSON records the 1-minute load average too.
The XDR micro-measurements (µs per key and per entry, fast path and stellar-sdk) are taken over
entries of the same state.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import stellar_sdk

from reconcile_audit.compute.ledger import read_ledger
from reconcile_audit.compute.ledger import xdr as ledger_xdr
from reconcile_audit.compute.ledger.simulate import read_ledger_simulated
from reconcile_audit.compute.settings import load_settings
from reconcile_audit.emulator import Emulator, escrow_instance_entry
from reconcile_audit.emulator.state import synthetic_state


def serve(escrows: int, seed: int, balances: bool) -> None:
    """Child mode: serve the synthetic state, print the URL, stop when stdin closes."""
    state = synthetic_state(escrows, seed=seed, custodial=balances)
    with Emulator(state) as emulator:
        print(emulator.url, flush=True)
        sys.stdin.read()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}), flush=True)


class SubprocessEmulator:
    def __init__(self, escrows: int, seed: int, balances: bool) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--serve",
                "--escrows",
                str(escrows),
                "--seed",
                str(seed),
                *(["--balances"] if balances else []),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().strip()
        if not self.url.startswith("http"):
            raise RuntimeError(f"the emulator subprocess did not start: {self.url!r}")
        self.peak_rss_mb: float | None = None

    def __enter__(self) -> SubprocessEmulator:
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.close()
        tail = self.process.stdout.read()
        self.process.wait(timeout=60)
        for line in tail.splitlines():
            if line.startswith("{"):
                self.peak_rss_mb = json.loads(line)["peak_rss_mb"]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def per_call_us(fn, items: list, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, time.perf_counter() - started)
    return round(best / len(items) * 1e6, 2)


def xdr_micro(state, sample: int) -> dict[str, float]:
    escrows = list(state.escrows[:sample])
    ids = [e.contract_id for e in escrows]
    entries = [escrow_instance_entry(e).to_xdr_bytes() for e in escrows]
    fast = [ledger_xdr.decode_escrow_fast(b) for b in entries]
    assert fast == [ledger_xdr.decode_escrow_sdk(b) for b in entries], "fast path disagrees with stellar-sdk"
    assert [ledger_xdr.instance_key(i) for i in ids] == [ledger_xdr.instance_key_sdk(i) for i in ids]
    return {
        "key_fast_us": per_call_us(ledger_xdr.instance_key, ids),
        "key_sdk_us": per_call_us(ledger_xdr.instance_key_sdk, ids[: max(1, sample // 4)]),
        "entry_fast_us": per_call_us(ledger_xdr.decode_escrow_fast, entries),
        "entry_sdk_us": per_call_us(ledger_xdr.decode_escrow_sdk, entries[: max(1, sample // 4)]),
        "entry_b64_fast_us": per_call_us(
            ledger_xdr.decode_escrow_entry, [base64.b64encode(b).decode() for b in entries]
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--escrows", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--per-invoice-sample", type=int, default=0, help="0: time every invoice")
    parser.add_argument("--per-invoice-repeats", type=int, default=1)
    parser.add_argument("--emulator", choices=("subprocess", "inprocess"), default="subprocess")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--micro-sample", type=int, default=2_000)
    parser.add_argument("--balances", action="store_true", help="custodial escrows: read their balances too")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.escrows, args.seed, args.balances)
        return

    state = synthetic_state(args.escrows, seed=args.seed, custodial=args.balances)
    ids = [e.contract_id for e in state.escrows]
    micro = xdr_micro(state, min(args.micro_sample, len(ids)))
    emulator = (
        SubprocessEmulator(args.escrows, args.seed, args.balances)
        if args.emulator == "subprocess"
        else Emulator(state)
    )
    with emulator as emu:
        settings = load_settings(
            {"rpc_url": emu.url, "rpc_concurrency": args.concurrency, "rpc_batch_size": args.batch_size}, {}
        )
        read_ledger(ids[:1000], settings, progress=False)  # warm up imports, pydantic models, connections
        batched: list[float] = []
        batched_cpu: list[float] = []
        rates: list[float] = []
        for _ in range(args.repeats):
            cpu_started = time.process_time()
            result = read_ledger(ids, settings, progress=False)
            batched_cpu.append(time.process_time() - cpu_started)
            not_ok = result.frame.height - int((result.frame["read_status"] == "ok").sum())
            if not_ok or result.frame.height != len(ids):
                raise SystemExit(f"batched read was not clean: {not_ok} rows not ok")
            batched.append(result.stats.seconds)
            rates.append(result.stats.entries_per_second)
            if args.balances and result.frame["chain_balance"].is_null().any():
                raise SystemExit("batched read with balances left balances unread")
        requests = result.stats.requests
        without_balances: list[float] = []
        if args.balances:
            # The same sweep, told that no escrow is custodial: no balance is read.
            nobody = load_settings(
                {
                    "rpc_url": emu.url,
                    "rpc_concurrency": args.concurrency,
                    "rpc_batch_size": args.batch_size,
                    "custodial_wasm_hashes": "00" * 32,
                },
                {},
            )
            for _ in range(args.repeats):
                without_balances.append(read_ledger(ids, nobody, progress=False).stats.seconds)

        sample = ids
        if 0 < args.per_invoice_sample < len(ids):
            sample = random.Random(args.seed).sample(ids, args.per_invoice_sample)
        per_invoice_runs: list[float] = []
        per_invoice_cpu: list[float] = []
        for _ in range(args.per_invoice_repeats):
            cpu_started = time.process_time()
            simulated = read_ledger_simulated(sample, settings, progress=False, with_funding_token=False)
            per_invoice_cpu.append(time.process_time() - cpu_started)
            if int((simulated.frame["read_status"] == "ok").sum()) != len(sample):
                raise SystemExit("per-invoice read was not clean")
            per_invoice_runs.append(simulated.stats.seconds)
        # Like for like: the per-invoice path reading the balance side too, one simulated
        # balance(escrow) on the funding token after each get_escrow (the token known up front,
        # which spares it a get_funding_token per invoice: the cheapest per-invoice reading).
        like_runs: list[float] = []
        if args.balances:
            token = state.tokens[0].contract_id
            for _ in range(args.per_invoice_repeats):
                simulated = read_ledger_simulated(
                    sample, settings, progress=False, with_funding_token=False, balance_token=token
                )
                if simulated.frame["chain_balance"].is_null().any():
                    raise SystemExit("per-invoice read with balances left balances unread")
                like_runs.append(simulated.stats.seconds)
    per_invoice_measured = statistics.median(per_invoice_runs)
    per_invoice = per_invoice_measured * len(ids) / len(sample)
    batched_median = statistics.median(batched)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    report = {
        "escrows": len(ids),
        "batched_seconds": round(batched_median, 3),
        "batched_seconds_runs": [round(s, 3) for s in batched],
        "per_invoice_seconds": round(per_invoice, 3),
        "per_invoice_seconds_runs": [round(s, 3) for s in per_invoice_runs],
        "per_invoice_sampled": len(sample) if len(sample) != len(ids) else None,
        "per_invoice_extrapolated": len(sample) != len(ids),
        "per_invoice_path": "simulateTransaction get_escrow, one call per invoice, in sequence (the seed's approach)",
        "speedup": round(per_invoice / batched_median, 1),
        "balances": args.balances,
        # With --balances: the per-invoice path reading the same two facts per escrow (get_escrow,
        # then balance), and the batched reader's speedup over it.
        "per_invoice_with_balances_seconds": round(statistics.median(like_runs) * len(ids) / len(sample), 3)
        if like_runs
        else None,
        "speedup_like_for_like": round(
            statistics.median(like_runs) * len(ids) / len(sample) / batched_median, 1
        )
        if like_runs
        else None,
        "batched_without_balances_seconds": round(statistics.median(without_balances), 3)
        if without_balances
        else None,
        "entries_per_second": round(statistics.median(rates)),
        # Client CPU only: on a busy machine wall time also counts waiting for a core.
        "batched_client_cpu_seconds": round(statistics.median(batched_cpu), 3),
        "per_invoice_client_cpu_seconds": round(
            statistics.median(per_invoice_cpu) * len(ids) / len(sample), 3
        ),
        "batched_requests": requests,
        "per_invoice_ms_per_invoice": round(per_invoice_measured / len(sample) * 1e3, 3),
        "batched_us_per_escrow": round(batched_median / len(ids) * 1e6, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "emulator": args.emulator,
        "emulator_peak_rss_mb": getattr(emulator, "peak_rss_mb", None),
        "repeats": args.repeats,
        "concurrency": args.concurrency,
        "batch_size": args.batch_size,
        **micro,
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "platform": platform.platform(),
            "stellar_sdk": stellar_sdk.__version__,
            "load_average_1m": round(os.getloadavg()[0], 2),
        },
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
