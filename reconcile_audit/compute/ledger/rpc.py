"""The JSON-RPC transport of the ledger reader: aiohttp posts, stellar-sdk response models, retries.

stellar-sdk's ``SorobanServerAsync`` is not used for the sweep: its aiohttp client has no retries,
drops the HTTP status and ``Retry-After`` of an answer that parses, and turns a 429 with a
non-JSON-RPC body into a pydantic ``ValidationError``. So this module posts the JSON-RPC itself,
classifies every outcome into an :class:`RpcFault` (transient or not), and parses answers with
stellar-sdk's own response models (``Response[GetLedgerEntriesResponse]`` ...). Measured, the
pydantic-core parse of a 200-entry answer costs about 1-3 µs per entry, of a client total near
14 µs per escrow, so the models stay on the hot path.

Retry policy (tenacity): exponential backoff with jitter, never shorter than the server's
``Retry-After`` (capped by :attr:`RetryPolicy.max_retry_after`), at most
``settings.rpc_max_retries`` retries. Transient: HTTP 429/502/503/504, connection errors and
timeouts, JSON-RPC -32001/-32003/-32603. A 200 whose body is not JSON-RPC is retried at most
:attr:`RetryPolicy.max_non_json_retries` times: a truncated body is transient, but a proxy that
answers HTML will keep doing so. Everything else (JSON-RPC -32602 and other client errors, other
HTTP statuses) is permanent and never sent again as the same request.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import email.utils
import itertools
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, TypeVar

import aiohttp
import pydantic
from stellar_sdk.soroban_rpc import Response
from tenacity import AsyncRetrying, RetryCallState, stop_after_attempt, wait_exponential_jitter

from reconcile_audit.compute.settings import public_url
from reconcile_audit.errors import RpcPreflightError

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from reconcile_audit.compute.settings import Settings

HTTP_TOO_MANY_REQUESTS: Final = 429
TRANSIENT_HTTP: Final = frozenset({HTTP_TOO_MANY_REQUESTS, 502, 503, 504})
TRANSIENT_RPC: Final = frozenset({-32001, -32003, -32603})
SPLIT_RPC: Final = -32001  # "request too large / busy": answered by halving the batch
MAX_KEYS: Final = 200  # getLedgerEntries' documented limit

M = TypeVar("M", bound=pydantic.BaseModel)
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff knobs. The defaults suit a production RPC; tests pass small ones."""

    initial_backoff: float = 0.25
    max_backoff: float = 8.0
    jitter: float = 0.25
    max_retry_after: float = 30.0
    max_non_json_retries: int = 2
    bisect_retries: int = 1  # retries for each half of a batch being bisected
    bisect_budget: int = 256  # extra requests a run may spend bisecting failing batches
    breaker_failures: int = 8  # calls failing in a row, with no success between, that open the breaker


class RpcFault(Exception):
    """One failed attempt. ``kind`` is a short tag (``http_503``, ``rpc_32001``, ``timeout``...)."""

    def __init__(
        self,
        kind: str,
        detail: str,
        *,
        transient: bool,
        retry_after: float | None = None,
        split: bool = False,
    ) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.transient = transient
        self.retry_after = retry_after
        self.split = split


@dataclass
class TransportCounters:
    """Mutable tallies, read into the frozen ``LedgerStats`` at the end of a sweep."""

    requests: int = 0
    retries: int = 0
    faults: Counter[str] = field(default_factory=Counter)

    def fault(self, kind: str, n: int = 1) -> None:
        self.faults[kind] += n


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header: delta-seconds or an HTTP date; None if unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class AdaptiveLimit:
    """At most ``limit`` requests in flight, starting at ``ceiling``: the limit halves each time
    the server says it is overloaded (HTTP 429) and grows back by one after as many answered
    requests in a row as the limit (additive increase, multiplicative decrease). Against a remote
    RPC, many requests in flight hide the round trip; against a rate-limited one, fewer get through.

    Waiters are woken one at a time, first come first served, as a slot frees: a sweep queues
    thousands of batches at once, and waking them all on every answer costs more than the sweep.
    """

    def __init__(self, ceiling: int) -> None:
        self.ceiling = self.limit = self.lowest = max(1, ceiling)
        self.in_flight = 0
        self._answered = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire(self) -> None:
        if self.in_flight < self.limit and not self._waiters:
            self.in_flight += 1
            return
        slot: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(slot)
        try:
            await slot  # the releaser counts this request in flight before waking it
        except asyncio.CancelledError:
            if slot.done() and not slot.cancelled():
                self.in_flight -= 1  # handed a slot, then cancelled: pass it on
                self._hand_on()
            else:
                self._waiters.remove(slot)
            raise

    def release(self, *, throttled: bool) -> None:
        self.in_flight -= 1
        if throttled:
            self.limit = max(1, self.limit // 2)
            self.lowest = min(self.lowest, self.limit)
            self._answered = 0
        else:
            self._answered += 1
            if self._answered >= self.limit and self.limit < self.ceiling:
                self.limit += 1
                self._answered = 0
        self._hand_on()

    def _hand_on(self) -> None:
        while self._waiters and self.in_flight < self.limit:
            slot = self._waiters.popleft()
            if not slot.done():
                self.in_flight += 1
                slot.set_result(None)


class RpcClient:
    """One aiohttp session to one RPC URL, with an adaptive bound on requests in flight."""

    def __init__(
        self, url: str, *, concurrency: int, timeout: float, max_retries: int, policy: RetryPolicy
    ) -> None:
        self.url = url
        self.policy = policy
        self.max_retries = max_retries
        self.counters = TransportCounters()
        self.in_flight = AdaptiveLimit(concurrency)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._concurrency = concurrency
        self._ids = itertools.count(1)
        self.consecutive_failures = 0
        self.last_failure = ""

    async def __aenter__(self) -> RpcClient:
        connector = aiohttp.TCPConnector(limit=self._concurrency, force_close=False)
        self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
        if self.in_flight.lowest < self.in_flight.ceiling:
            log.warning(
                "the RPC answered 429 (too many requests): requests in flight were cut from %d "
                "to as few as %d; lower RECONCILE_RPC_CONCURRENCY if this happens every night",
                self.in_flight.ceiling,
                self.in_flight.lowest,
            )

    async def call(
        self,
        method: str,
        params: dict[str, Any] | None,
        model: type[M],
        *,
        retries: int | None = None,
        can_split: bool = False,
    ) -> M:
        """Post until an answer parses, a permanent fault, or retries run out (the last fault is raised).

        With ``can_split``, a -32001 is raised at once (the caller halves the batch) instead of retried.
        """
        non_json = 0

        def should_retry(state: RetryCallState) -> bool:
            nonlocal non_json
            exc = state.outcome.exception() if state.outcome else None
            if not isinstance(exc, RpcFault) or not exc.transient or (exc.split and can_split):
                return False
            if exc.kind == "non_json":
                non_json += 1
                return non_json <= self.policy.max_non_json_retries
            return True

        backoff = wait_exponential_jitter(
            multiplier=self.policy.initial_backoff, max=self.policy.max_backoff, jitter=self.policy.jitter
        )

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            delay = backoff(state)
            if isinstance(exc, RpcFault) and exc.retry_after is not None:
                delay = max(delay, min(exc.retry_after, self.policy.max_retry_after))
            return delay

        def before_sleep(state: RetryCallState) -> None:
            self.counters.retries += 1

        attempts = (self.max_retries if retries is None else retries) + 1
        try:
            result = await self._call(method, params, model, attempts, should_retry, wait, before_sleep)
        except RpcFault as fault:
            if fault.kind != "breaker" and not (fault.split and can_split):
                self.consecutive_failures += 1
                self.last_failure = str(fault)
            raise
        self.consecutive_failures = 0
        return result

    async def _call(
        self,
        method: str,
        params: dict[str, Any] | None,
        model: type[M],
        attempts: int,
        should_retry: Callable[[RetryCallState], bool],
        wait: Callable[[RetryCallState], float],
        before_sleep: Callable[[RetryCallState], None],
    ) -> M:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(attempts),
            wait=wait,
            retry=should_retry,
            before_sleep=before_sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._post_once(method, params, model)
        raise AssertionError("unreachable: tenacity reraises the last fault")

    async def _post_once(self, method: str, params: dict[str, Any] | None, model: type[M]) -> M:
        assert self._session is not None, "use RpcClient as an async context manager"
        if method == "getLedgerEntries" and params is not None and len(params["keys"]) > MAX_KEYS:
            raise AssertionError(f"a getLedgerEntries request must carry at most {MAX_KEYS} keys")
        body = json.dumps({"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params})
        await self.in_flight.acquire()
        status = 0
        try:
            if self.consecutive_failures >= self.policy.breaker_failures:
                # The RPC is down: waiting out every remaining batch's backoff would only delay the report.
                self.counters.fault("breaker")
                raise RpcFault(
                    "breaker",
                    f"not sent: {self.consecutive_failures} calls failed in a row (last: {self.last_failure})",
                    transient=False,
                )
            self.counters.requests += 1
            try:
                async with self._session.post(
                    self.url, data=body, headers={"Content-Type": "application/json"}
                ) as response:
                    status = response.status
                    retry_after = retry_after_seconds(response.headers.get("Retry-After"))
                    raw = await response.read()
            except TimeoutError as exc:
                raise self._fault("timeout", f"no answer within {self._timeout.total} s", True) from exc
            except (aiohttp.ClientError, ConnectionError) as exc:
                raise self._fault("connection", f"{type(exc).__name__}: {exc}", True) from exc
        finally:
            self.in_flight.release(throttled=status == HTTP_TOO_MANY_REQUESTS)
        return self._parse(status, retry_after, raw, model)

    def _fault(self, kind: str, detail: str, transient: bool, **kw: Any) -> RpcFault:
        self.counters.fault(kind)
        return RpcFault(kind, detail, transient=transient, **kw)

    def _parse(self, status: int, retry_after: float | None, raw: bytes, model: type[M]) -> M:
        problem = ""
        try:
            answer = _response_model(model).model_validate_json(raw)
        except pydantic.ValidationError as exc:
            answer = None
            problem = _first_error(exc)
        if status in TRANSIENT_HTTP:
            # The status decides, whatever the body: a 429 may carry a JSON-RPC error of its own.
            detail = (answer.error.message or "") if answer is not None and answer.error else _snippet(raw)
            raise self._fault(f"http_{status}", detail, True, retry_after=retry_after)
        if answer is not None and answer.error is not None:
            code = answer.error.code
            # Kinds named as the emulator's FAULT_KINDS name them (rpc_32001); the text keeps the sign.
            kind, message = f"rpc_{abs(code)}", f"JSON-RPC error {code}: {answer.error.message or ''}"
            if code in TRANSIENT_RPC:
                raise self._fault(kind, message, True, retry_after=retry_after, split=code == SPLIT_RPC)
            raise self._fault(kind, message, False)
        if status != 200:
            raise self._fault(f"http_{status}", _snippet(raw), False)
        if answer is None:
            raise self._fault("non_json", f"the answer is not a JSON-RPC {model.__name__} ({problem})", True)
        if answer.result is None:
            raise self._fault("non_json", "the JSON-RPC answer has neither result nor error", True)
        return answer.result


_MODELS: dict[type, type] = {}


def _response_model(model: type[M]) -> type[Response[M]]:
    found = _MODELS.get(model)
    if found is None:
        found = _MODELS[model] = Response[model]  # type: ignore[valid-type]
    return found


def _first_error(exc: pydantic.ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    return f"{where}: {first.get('msg')}" if where else str(first.get("msg"))


def _snippet(raw: bytes) -> str:
    text = raw[:160].decode("utf-8", "replace").strip()
    return text or "(empty body)"


def rpc_url(settings: Settings) -> str:
    if not settings.rpc_url:
        raise RpcPreflightError("no Stellar RPC URL: set SOROBAN_RPC_URL (or the rpc_url parameter)")
    return settings.rpc_url


def rpc_name(settings: Settings) -> str:
    """The RPC as messages name it: ``scheme://host[:port]``, never a key in its path or query."""
    return public_url(rpc_url(settings))


def client_for(settings: Settings, policy: RetryPolicy) -> RpcClient:
    return RpcClient(
        rpc_url(settings),
        concurrency=max(1, settings.rpc_concurrency),
        timeout=settings.rpc_timeout_seconds,
        max_retries=max(0, settings.rpc_max_retries),
        policy=policy,
    )


def run_sync(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``make()`` to completion. Jupyter's kernel already runs a loop on this thread, where
    ``asyncio.run`` refuses, so then the coroutine runs on a worker thread with a loop of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="reconcile-ledger") as pool:
        return pool.submit(lambda: asyncio.run(make())).result()
