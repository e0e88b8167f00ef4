"""``python -m reconcile_audit.emulator``: serve a synthetic ledger on loopback until interrupted.

For manual checks with curl or a notebook, and for a benchmark that wants the emulator in a process
of its own (so its CPU does not share the client's interpreter lock). Prints the URL on the first
line of stdout once it is listening.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from reconcile_audit.emulator.faults import FAULT_KINDS, FaultPlan
from reconcile_audit.emulator.server import serve_forever
from reconcile_audit.emulator.state import DEFAULT_LATEST_LEDGER, synthetic_state

app = typer.Typer(add_completion=False, help=__doc__)


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
) -> None:
    try:
        faults = FaultPlan(rate=fault_rate, kinds=tuple(fault_kind or ()), seed=seed)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    state = synthetic_state(escrows, seed=seed, latest_ledger=latest_ledger, decimals=decimals)
    serve_forever(state, faults, host, port, on_ready=_announce)


if __name__ == "__main__":
    app()
