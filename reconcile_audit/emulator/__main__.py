"""``python -m reconcile_audit.emulator``: serve a ledger on loopback until interrupted.

A synthetic one (``--escrows N``), or the escrows listed in a Parquet file (``--escrows-file``,
columns in ``state.ESCROW_FILE_COLUMNS``), such as a benchmark's database holds. For manual checks
with curl or a notebook, and for a benchmark that wants the emulator in a process of its own (so
its CPU does not share the client's interpreter lock). ``--latency-ms`` delays every answer, as an
RPC that is not on loopback would. Prints the URL on the first line of stdout once it is listening.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from reconcile_audit.emulator.faults import FAULT_KINDS, FaultPlan
from reconcile_audit.emulator.server import serve_forever
from reconcile_audit.emulator.state import DEFAULT_LATEST_LEDGER, state_from_escrow_file, synthetic_state

app = typer.Typer(add_completion=False, help=__doc__)
# What --latency-ms delays: every method the audit calls.
LATENCY_METHODS = (
    "getLedgerEntries",
    "getLatestLedger",
    "getHealth",
    "getNetwork",
    "simulateTransaction",
    "getEvents",
    "getTransaction",
)


def _announce(url: str) -> None:
    sys.stdout.write(url + "\n")
    sys.stdout.flush()


@app.command()
def main(
    escrows: Annotated[int, typer.Option(min=0, help="Synthetic escrows to serve.")] = 1_000,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic state and of the fault draw.")] = 0,
    host: Annotated[str, typer.Option(help="Address to listen on (keep it loopback).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port; 0 picks a free one.")] = 0,
    latest_ledger: Annotated[int, typer.Option(min=1)] = DEFAULT_LATEST_LEDGER,
    decimals: Annotated[int, typer.Option(min=0, max=38)] = 7,
    fault_rate: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of getLedgerEntries requests faulted.")
    ] = 0.0,
    fault_kind: Annotated[
        list[str] | None, typer.Option(help=f"A fault kind (repeatable): {', '.join(FAULT_KINDS)}.")
    ] = None,
    escrows_file: Annotated[
        str | None, typer.Option(help="Serve the escrows of this Parquet file instead of synthetic ones.")
    ] = None,
    latency_ms: Annotated[
        float, typer.Option(min=0.0, help="Delay every answer by this many milliseconds.")
    ] = 0.0,
    without: Annotated[
        list[str] | None,
        typer.Option(
            help="A method to answer 'method not found' (repeatable), as an older RPC would: getEvents, getTransaction."
        ),
    ] = None,
) -> None:
    try:
        if latency_ms and fault_rate:
            raise ValueError("--latency-ms and --fault-rate cannot be combined")
        unsupported = tuple(without or ())
        faults = (
            FaultPlan(
                rate=1.0,
                kinds=("delay",),
                delay_seconds=latency_ms / 1000,
                methods=LATENCY_METHODS,
                unsupported=unsupported,
            )
            if latency_ms
            else FaultPlan(rate=fault_rate, kinds=tuple(fault_kind or ()), seed=seed, unsupported=unsupported)
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if escrows_file is not None:
        state = state_from_escrow_file(escrows_file, latest_ledger=latest_ledger, decimals=decimals)
    else:
        state = synthetic_state(escrows, seed=seed, latest_ledger=latest_ledger, decimals=decimals)
    serve_forever(state, faults, host, port, on_ready=_announce)


if __name__ == "__main__":
    app()
