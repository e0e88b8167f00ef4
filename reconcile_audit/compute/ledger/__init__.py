"""Stage: read every escrow from Stellar RPC into the LEDGER frame (schemas.LEDGER).

Who lives here:
- ``stage``: the stage's calls, :func:`preflight` and :func:`read_ledger`, which picks the path, and
  :class:`EarlySweep`; the package exports them, but imports them only when first used;
- ``types``: what the stage returns (:class:`LedgerRead`, :class:`LedgerStats`, :class:`NetworkFacts`);
- ``batched``: the default path, ``getLedgerEntries`` batches of instance keys;
- ``simulate``: the seed's per-invoice ``simulateTransaction`` path, a slow fallback and reference;
- ``rpc``: the JSON-RPC transport (retries, backoff, breaker) both paths use;
- ``xdr``: keys and entry decoding, with a hand-written fast path tested against stellar-sdk;
- ``columns``: most escrow entries decoded a read at a time, as columns;
- ``activity``: the escrows' contract events (``getEvents``) and the database's transactions
  (``getTransaction``), for the explain stage (:mod:`reconcile_audit.compute.explain`).

A new RPC method goes into ``rpc`` as a call (``RpcClient.call`` with its stellar-sdk response
model), and the path that needs it decides what its answer means.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from reconcile_audit.compute.ledger.types import LedgerRead, LedgerStats, NetworkFacts

if TYPE_CHECKING:
    from reconcile_audit.compute.ledger.stage import EarlySweep, preflight, read_ledger

_STAGE = frozenset({"EarlySweep", "preflight", "read_ledger"})


def __getattr__(name: str) -> Any:
    # The stage's calls bring the RPC client, stellar-sdk and aiohttp (about 70 MB and 0.6 s of
    # imports): loaded on first use, so a process that needs only the types (the CLI, whose
    # findings and run records name a LedgerRead) does without them.
    if name in _STAGE:
        from reconcile_audit.compute.ledger import stage

        return getattr(stage, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["EarlySweep", "LedgerRead", "LedgerStats", "NetworkFacts", "preflight", "read_ledger"]
