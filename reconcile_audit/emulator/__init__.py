"""A local Stellar-RPC-compatible emulator: real XDR over a ledger state the caller gives.

The demo, the tests and the benchmark read escrows from it over loopback HTTP::

    state = synthetic_state(20_000, seed=1)          # or LedgerState(latest_ledger, escrows, tokens)
    plan = FaultPlan(rate=0.2, kinds=("http_429", "rpc_32001"), seed=7)
    with Emulator(state, plan) as emulator:          # background thread, own event loop
        SorobanServer(emulator.url).get_ledger_entries([instance_key(state.escrows[0].contract_id)])
        emulator.stats                                # requests, faults injected, keys served

Modules: ``state`` (specs and the stellar-sdk XDR oracle), ``encode`` (the same bytes, fast),
``rpc`` (the methods, no HTTP), ``activity`` (the escrow contract's events and transactions behind
``getEvents`` and ``getTransaction``), ``jsonrpc`` (the error a refused request raises), ``faults``
(the plan and its seeded draw), ``server`` (aiohttp).
``python -m reconcile_audit.emulator --escrows N`` serves a synthetic state from its own process.
"""

from reconcile_audit.emulator.faults import FAULT_KINDS, FaultPlan
from reconcile_audit.emulator.server import Emulator, EmulatorStats, serve_forever
from reconcile_audit.emulator.state import (
    STORAGE_SHAPES,
    TESTNET,
    EscrowSpec,
    LedgerState,
    Mutation,
    TokenSpec,
    escrow_instance_entry,
    instance_key,
    random_account_id,
    random_contract_id,
    synthetic_state,
    token_instance_entry,
)

__all__ = [
    "FAULT_KINDS",
    "STORAGE_SHAPES",
    "TESTNET",
    "Emulator",
    "EmulatorStats",
    "EscrowSpec",
    "FaultPlan",
    "LedgerState",
    "Mutation",
    "TokenSpec",
    "escrow_instance_entry",
    "instance_key",
    "random_account_id",
    "random_contract_id",
    "serve_forever",
    "synthetic_state",
    "token_instance_entry",
]
