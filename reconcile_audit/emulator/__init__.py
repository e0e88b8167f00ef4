"""A local Stellar-RPC-compatible emulator: real XDR over a ledger state the caller gives.

The demo, the tests and the benchmark read escrows from it over loopback HTTP.
"""

from reconcile_audit.emulator.faults import FAULT_KINDS, FaultPlan
from reconcile_audit.emulator.server import Emulator, EmulatorStats, serve_forever
from reconcile_audit.emulator.state import (
    STORAGE_SHAPES,
    TESTNET,
    EscrowSpec,
    LedgerState,
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
    "TokenSpec",
    "escrow_instance_entry",
    "instance_key",
    "random_account_id",
    "random_contract_id",
    "serve_forever",
    "synthetic_state",
    "token_instance_entry",
]
