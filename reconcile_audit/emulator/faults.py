"""Fault injection for the emulator: what goes wrong, how often, and for which keys, deterministically.

Transient faults are drawn per request from ``FaultPlan.rate`` and ``kinds``. The draw for a
request depends only on the seed, the request's content (method and keys) and how many times that
same content was asked before, so a client that sends its batches concurrently, in any order,
meets the same faults on every run. Permanent faults (``poisoned``) hit every request that asks
for a poisoned contract.
"""

from __future__ import annotations

import hashlib
import random
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

FAULT_KINDS: Final = (
    "http_429",
    "http_503",
    "http_504",
    "rpc_32001",
    "rpc_32003",
    "rpc_32603",
    "rpc_32602",
    "delay",
    "drop_connection",
    "non_json",
    "corrupt_xdr",
    "unrequested_entry",
    "conflicting_entry",
    "http_429_text",
)

# Kinds that replace the whole response; the others alter or slow a normal one.
REQUEST_FAULTS: Final = frozenset(FAULT_KINDS) - {
    "delay",
    "corrupt_xdr",
    "unrequested_entry",
    "conflicting_entry",
}

# JSON-RPC error codes and the messages the emulator sends with them.
RPC_ERRORS: Final[Mapping[str, tuple[int, str]]] = MappingProxyType(
    {
        "rpc_32001": (-32001, "request timed out: ledger entry read exceeded its deadline"),
        "rpc_32003": (-32003, "server busy: too many requests in flight"),
        "rpc_32603": (-32603, "internal error: could not query the ledger entry store"),
        "rpc_32602": (-32602, "invalid parameters"),
    }
)

# The JSON-RPC body of an ``http_429``: a code outside the transient set, so a client has to look
# at the HTTP status (and Retry-After) to know it may retry.
RATE_LIMIT_ERROR: Final = (-32005, "rate limit exceeded")


@dataclass(frozen=True)
class FaultPlan:
    """Which faults the emulator injects.

    ``rate`` is the probability that a request to one of ``methods`` gets a fault, drawn
    uniformly from ``kinds``. ``poisoned`` maps a contract id to a kind applied every time that
    contract's instance key is requested (or simulated): a permanent fault.
    """

    rate: float = 0.0
    kinds: tuple[str, ...] = ()
    seed: int = 0
    retry_after_seconds: float = 0.05
    delay_seconds: float = 0.2
    poisoned: Mapping[str, str] = field(default_factory=dict)
    methods: tuple[str, ...] = ("getLedgerEntries",)
    # Methods the emulated RPC does not offer: they answer -32601, as an older stellar-rpc would.
    unsupported: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"fault rate {self.rate} is not a probability")
        unknown = [k for k in (*self.kinds, *self.poisoned.values()) if k not in FAULT_KINDS]
        if unknown:
            raise ValueError(f"unknown fault kinds {unknown}; known: {FAULT_KINDS}")
        if self.rate > 0 and not self.kinds:
            raise ValueError("a fault rate above 0 needs at least one kind")
        if self.retry_after_seconds < 0 or self.delay_seconds < 0:
            raise ValueError("retry_after_seconds and delay_seconds must not be negative")
        # Freeze a caller's dict so the plan cannot change under a running server.
        object.__setattr__(self, "poisoned", MappingProxyType(dict(self.poisoned)))

    # A mappingproxy does not pickle; a plan handed to a child process must.
    def __getstate__(self) -> dict[str, object]:
        return {**self.__dict__, "poisoned": dict(self.poisoned)}

    def __setstate__(self, fields: dict[str, object]) -> None:
        self.__dict__.update(fields)
        object.__setattr__(self, "poisoned", MappingProxyType(dict(fields["poisoned"])))  # type: ignore[call-overload]


def retry_after_header(seconds: float) -> str:
    """Integral seconds as RFC 9110 wants them; a fraction is kept so tests can stay fast."""
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


class FaultDecider:
    """Draws the transient fault for each request of a plan; thread-safe."""

    def __init__(self, plan: FaultPlan) -> None:
        self.plan = plan
        self._attempts: dict[bytes, int] = {}
        self._lock = threading.Lock()

    def draw(self, method: str, content: Iterable[str]) -> tuple[str | None, random.Random]:
        """The transient fault kind for this request (or None), and a generator for its details."""
        digest = hashlib.sha256(method.encode() + b"\x00" + "\x00".join(content).encode()).digest()
        with self._lock:
            attempt = self._attempts.get(digest, 0)
            self._attempts[digest] = attempt + 1
        rng = random.Random(hashlib.sha256(f"{self.plan.seed}:{attempt}:".encode() + digest).digest())
        plan = self.plan
        if plan.rate > 0 and method in plan.methods and rng.random() < plan.rate:
            return rng.choice(plan.kinds), rng
        return None, rng
