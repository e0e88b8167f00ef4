"""What the ledger stage returns, and the pieces both read paths (batched and simulated) share."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Final

import polars as pl

if TYPE_CHECKING:
    from reconcile_audit.compute.ledger.rpc import TransportCounters


TOKEN_DECIMALS_SETTING: Final = "RECONCILE_TOKEN_DECIMALS"
UNAVAILABLE: Final = "not read: the RPC was unavailable"


@dataclass(frozen=True)
class NetworkFacts:
    passphrase: str
    protocol_version: int
    latest_ledger: int


@dataclass(frozen=True)
class LedgerStats:
    """Counters of one sweep. ``faults_by_kind`` counts failed attempts and ignored entries."""

    requests: int
    retries: int
    batches: int
    entries: int
    seconds: float
    entries_per_second: float
    faults_by_kind: Mapping[str, int]

    @classmethod
    def of_sweep(
        cls, counters: TransportCounters, *, batches: int, entries: int, seconds: float
    ) -> LedgerStats:
        return cls(
            requests=counters.requests,
            retries=counters.retries,
            batches=batches,
            entries=entries,
            seconds=seconds,
            entries_per_second=entries / seconds if seconds > 0 else 0.0,
            faults_by_kind=MappingProxyType(dict(counters.faults)),
        )


@dataclass(frozen=True)
class LedgerRead:
    """The LEDGER frame (one row per distinct contract id asked for) and how it was read."""

    frame: pl.DataFrame
    ledger_min: int | None
    ledger_max: int | None
    stats: LedgerStats
    # Token contract -> its METADATA symbol, for the tokens read; names tokens to people.
    token_symbols: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    # The RPC's latest ledger before the first batch; None when unknown (the simulate path).
    sweep_start_ledger: int | None = None

    @property
    def breaker_opened(self) -> bool:
        """Whether the reader stopped sending because calls kept failing (the RPC went down)."""
        return self.stats.faults_by_kind.get("breaker", 0) > 0

    @property
    def read_share(self) -> float:
        """The share of the escrows asked for whose answer was read (1.0 when none was asked)."""
        if self.frame.is_empty():
            return 1.0
        unread = self.frame.filter(pl.col("read_status") == "error").height
        return (self.frame.height - unread) / self.frame.height

    def incomplete_because(self, min_read_share: float) -> str | None:
        """Why this read cannot stand for the escrows it was asked for, or None when it can."""
        read = self.read_share
        if self.breaker_opened:
            return (
                f"the RPC became unavailable during the sweep (the reader stopped after repeated "
                f"failures); {read:.1%} of the escrows were read"
            )
        if read < min_read_share:
            return f"only {read:.1%} of the escrows were read, below the {min_read_share:.1%} required"
        return None

    def summary_line(self) -> str:
        s = self.stats
        ledgers = (
            "no ledger read" if self.ledger_min is None else f"ledgers {self.ledger_min}-{self.ledger_max}"
        )
        return (
            f"ledger: {self.frame.height:,} escrows in {s.requests:,} requests ({s.retries:,} retries), "
            f"{s.seconds:.1f} s, {s.entries_per_second:,.0f} entries/s, {ledgers}"
        )


ContractIds = Iterable[str | None] | pl.Series


def distinct_ids(contract_ids: ContractIds) -> pl.Series:
    """The ids to read: first occurrence order, None and empty ids skipped. A column, not Python
    strings: at 1M escrows those were 0.12 GB of the ledger stage's peak."""
    ids = (
        contract_ids
        if isinstance(contract_ids, pl.Series)
        else pl.Series(list(contract_ids), dtype=pl.String)
    )
    return ids.filter(ids.is_not_null() & (ids != "")).unique(maintain_order=True).alias("contract_id")


def unavailable(detail: str) -> str:
    """The reason of an escrow an outage left unread: it names the outage, never a setting to change."""
    return f"{UNAVAILABLE} ({detail})"


def unknown_decimals(token: str, why: str) -> str:
    """The reason an invoice funded in ``token`` cannot be compared: its decimals are unknown."""
    return f"decimals of funding token {token} unknown: {why}; configure them in {TOKEN_DECIMALS_SETTING}"
