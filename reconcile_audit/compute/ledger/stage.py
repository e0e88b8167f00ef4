"""The ledger stage's calls: :func:`preflight`, :func:`read_ledger` (which picks the path) and
:class:`EarlySweep`. The package re-exports them, imported when first used."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import replace
from types import MappingProxyType

import polars as pl
from stellar_sdk.soroban_rpc import GetHealthResponse, GetNetworkResponse

from reconcile_audit.compute.ledger.batched import read_ledger_batched
from reconcile_audit.compute.ledger.rpc import RetryPolicy, RpcFault, client_for, rpc_name, run_sync
from reconcile_audit.compute.ledger.simulate import read_ledger_simulated
from reconcile_audit.compute.ledger.types import (
    ContractIds,
    LedgerRead,
    LedgerStats,
    NetworkFacts,
    distinct_ids,
)
from reconcile_audit.compute.settings import Settings
from reconcile_audit.errors import RpcPreflightError

# The package's name: what operators filter its records by, wherever in it the code sits.
log = logging.getLogger("reconcile_audit.compute.ledger")


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


class EarlySweep:
    """The batched sweep of the escrows the stage will most likely read, started on a thread of its
    own before the stage's ids are known (issue 14): it reads the chain while the extract waits on
    the database, which at 1M invoices is about 10 s of the run on the other core.

    ``candidates`` (run on that thread) names the escrows, or returns None when it cannot know
    them. :func:`read_ledger` takes what this read of the escrows it asks for and reads the rest.
    A sweep that failed, or whose RPC went down (its breaker opened), gives no head start: the
    stage then reads every escrow itself, as without one. Neither the simulate path nor
    ``RECONCILE_RPC_EARLY_SWEEP=false`` starts one.
    """

    def __init__(
        self,
        candidates: Callable[[], ContractIds | None],
        settings: Settings,
        *,
        policy: RetryPolicy | None = None,
    ) -> None:
        self._read: LedgerRead | None = None
        self._thread: threading.Thread | None = None
        if settings.rpc_early_sweep and not settings.rpc_use_simulate:
            self._thread = threading.Thread(
                target=self._sweep, args=(candidates, settings, policy), name="early-sweep", daemon=True
            )
            self._thread.start()

    def _sweep(
        self, candidates: Callable[[], ContractIds | None], settings: Settings, policy: RetryPolicy | None
    ) -> None:
        try:
            named = candidates()
            if named is None:
                return
            ids = distinct_ids(named)
            del named  # held through the sweep otherwise: at 1M escrows, 72 MB
            read = read_ledger_batched(ids, settings, progress=False, policy=policy)
        except Exception as exc:  # the stage reads every escrow itself, and says why if it fails too
            log.warning(
                "the early ledger sweep failed, the ledger stage reads every escrow: %s",
                settings.redact(str(exc)),
            )
            return
        if read.breaker_opened:
            log.warning(
                "the RPC went down during the early ledger sweep: the ledger stage reads every escrow"
            )
            return
        log.info("early ledger sweep: %s", read.summary_line())
        self._read = read

    def result(self) -> LedgerRead | None:
        """The early read once it is done, or None when there is none to use. Handed over once:
        the notebook keeps this object to the end, and must not keep the frame with it."""
        if self._thread is not None:
            self._thread.join()
        read, self._read = self._read, None
        return read


def read_ledger(
    contract_ids: ContractIds,
    settings: Settings,
    *,
    progress: bool = True,
    policy: RetryPolicy | None = None,
    early: EarlySweep | None = None,
) -> LedgerRead:
    """Read the escrow of every distinct contract id (None and empty ids are skipped).

    ``settings.rpc_use_simulate`` switches to the per-invoice ``simulateTransaction`` path
    (:mod:`reconcile_audit.compute.ledger.simulate`), which is slow and meant only as a fallback.
    With ``early``, the escrows it read stand and only the others are read now.
    """
    policy = policy or RetryPolicy()
    ids = distinct_ids(contract_ids)
    first = early.result() if early is not None else None
    if first is None:
        read = read_ledger_simulated if settings.rpc_use_simulate else read_ledger_batched
        result = read(ids, settings, progress=progress, policy=policy)
    else:
        result = _after_early(first, ids, settings, progress=progress, policy=policy)
    log.info(result.summary_line())
    return result


def _after_early(
    first: LedgerRead, ids: pl.Series, settings: Settings, *, progress: bool, policy: RetryPolicy
) -> LedgerRead:
    """``ids`` read: the rows ``first`` holds, and the other escrows read now. A row per id, and
    none for an escrow ``first`` read that is not among ``ids``."""
    held = first.frame.get_column("contract_id")
    rest = ids.filter(~ids.is_in(held.implode()))
    frame = first.frame
    if frame.height != ids.len() - rest.len():  # it read escrows the run does not audit
        frame = frame.filter(pl.col("contract_id").is_in(ids.implode()))
    first = replace(first, frame=frame)
    if rest.is_empty():
        return first
    return _combined(first, read_ledger_batched(rest, settings, progress=progress, policy=policy))


def _combined(first: LedgerRead, second: LedgerRead) -> LedgerRead:
    """Two sweeps as one: the ledgers of both, the counters summed, and the earlier start, so an
    escrow modified since the first began is read again after classify."""

    def low(a: int | None, b: int | None) -> int | None:
        return min((v for v in (a, b) if v is not None), default=None)

    def high(a: int | None, b: int | None) -> int | None:
        return max((v for v in (a, b) if v is not None), default=None)

    one, two = first.stats, second.stats
    faults = dict(one.faults_by_kind)
    for kind, count in two.faults_by_kind.items():
        faults[kind] = faults.get(kind, 0) + count
    seconds = one.seconds + two.seconds
    entries = one.entries + two.entries
    stats = LedgerStats(
        requests=one.requests + two.requests,
        retries=one.retries + two.retries,
        batches=one.batches + two.batches,
        entries=entries,
        seconds=seconds,
        entries_per_second=entries / seconds if seconds > 0 else 0.0,
        faults_by_kind=MappingProxyType(faults),
    )
    return LedgerRead(
        frame=pl.concat([first.frame, second.frame], rechunk=False),
        ledger_min=low(first.ledger_min, second.ledger_min),
        ledger_max=high(first.ledger_max, second.ledger_max),
        stats=stats,
        token_symbols=MappingProxyType({**first.token_symbols, **second.token_symbols}),
        sweep_start_ledger=low(first.sweep_start_ledger, second.sweep_start_ledger),
    )
