"""Stage: read every escrow from Stellar RPC into the LEDGER frame (schemas.LEDGER).

Who lives here:
- ``__init__``: the stage's calls, :func:`preflight` and :func:`read_ledger`, which picks the path;
- ``types``: what the stage returns (:class:`LedgerRead`, :class:`LedgerStats`, :class:`NetworkFacts`);
- ``batched``: the default path, ``getLedgerEntries`` batches of instance keys;
- ``simulate``: the seed's per-invoice ``simulateTransaction`` path, a slow fallback and reference;
- ``rpc``: the JSON-RPC transport (retries, backoff, breaker) both paths use;
- ``xdr``: keys and entry decoding, with a hand-written fast path tested against stellar-sdk.
- ``activity``: the escrows' contract events (``getEvents``) and the database's transactions
  (``getTransaction``), for the explain stage (:mod:`reconcile_audit.compute.explain`).

A new RPC method goes into ``rpc`` as a call (``RpcClient.call`` with its stellar-sdk response
model), and the path that needs it decides what its answer means.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from stellar_sdk.soroban_rpc import GetHealthResponse, GetNetworkResponse

from reconcile_audit.compute.ledger.batched import read_ledger_batched
from reconcile_audit.compute.ledger.rpc import RetryPolicy, RpcFault, client_for, rpc_name, run_sync
from reconcile_audit.compute.ledger.simulate import read_ledger_simulated
from reconcile_audit.compute.ledger.types import LedgerRead, LedgerStats, NetworkFacts, distinct_ids
from reconcile_audit.compute.settings import Settings
from reconcile_audit.errors import RpcPreflightError

log = logging.getLogger(__name__)


def preflight(settings: Settings, *, policy: RetryPolicy | None = None) -> NetworkFacts:
    """Check the RPC before any work: same network passphrase, and ``getHealth`` healthy.

    Raises :class:`RpcPreflightError` (exit code 2) with what to fix.
    """
    return run_sync(lambda: _preflight(settings, policy or RetryPolicy()))


async def _preflight(settings: Settings, policy: RetryPolicy) -> NetworkFacts:
    url = rpc_name(settings)
    async with client_for(settings, policy) as client:
        try:
            network = await client.call("getNetwork", None, GetNetworkResponse)
            health = await client.call("getHealth", None, GetHealthResponse)
        except RpcFault as fault:
            raise RpcPreflightError(f"Stellar RPC at {url} is not usable: {fault}") from fault
    if network.passphrase != settings.network_passphrase:
        raise RpcPreflightError(
            f"Stellar RPC at {url} serves the network {network.passphrase!r}, but this run is configured "
            f"for {settings.network_passphrase!r} (STELLAR_NETWORK_PASSPHRASE): refusing to audit "
            "against the wrong network"
        )
    if health.status != "healthy":
        raise RpcPreflightError(
            f"Stellar RPC at {url} reports getHealth status {health.status!r}, not 'healthy'"
        )
    return NetworkFacts(network.passphrase, network.protocol_version, health.latest_ledger)


def read_ledger(
    contract_ids: Sequence[str],
    settings: Settings,
    *,
    progress: bool = True,
    policy: RetryPolicy | None = None,
) -> LedgerRead:
    """Read the escrow of every distinct contract id (None and empty ids are skipped).

    ``settings.rpc_use_simulate`` switches to the per-invoice ``simulateTransaction`` path
    (:mod:`reconcile_audit.compute.ledger.simulate`), which is slow and meant only as a fallback.
    """
    policy = policy or RetryPolicy()
    ids = distinct_ids(contract_ids)
    read = read_ledger_simulated if settings.rpc_use_simulate else read_ledger_batched
    result = read(ids, settings, progress=progress, policy=policy)
    log.info(result.summary_line())
    return result


__all__ = ["LedgerRead", "LedgerStats", "NetworkFacts", "preflight", "read_ledger"]
