"""The emulator's HTTP side: JSON-RPC 2.0 over aiohttp on loopback, with the faults of a FaultPlan.

``Emulator`` runs the server in a background thread with its own event loop, so synchronous
callers (tests, the demo, a notebook kernel whose loop is already running) can use it alike.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import Any, Final

from aiohttp import web

from reconcile_audit.emulator import encode
from reconcile_audit.emulator.faults import (
    RATE_LIMIT_ERROR,
    REQUEST_FAULTS,
    RPC_ERRORS,
    FaultDecider,
    FaultPlan,
    retry_after_header,
)
from reconcile_audit.emulator.rpc import Entry, RpcError, RpcNode, entry_fragment, fragment_xdr
from reconcile_audit.emulator.state import EscrowSpec, LedgerState, random_account_id, random_contract_id

log = logging.getLogger(__name__)

_JSON: Final = "application/json"
_MAX_BODY: Final = 16 * 1024 * 1024


@dataclass(frozen=True)
class EmulatorStats:
    """A snapshot of what the emulator has served so far."""

    http_requests: int = 0
    connections: int = 0  # distinct client sockets seen: equal to http_requests without keep-alive
    requests: Mapping[str, int] = field(default_factory=dict)  # per JSON-RPC method
    faults: Mapping[str, int] = field(default_factory=dict)  # injected, per kind
    keys_requested: int = 0  # getLedgerEntries keys asked for
    entries_served: int = 0  # getLedgerEntries entries answered (faulted answers excluded)
    build_seconds: float = 0.0  # time spent pre-encoding the state

    @property
    def faults_total(self) -> int:
        return sum(self.faults.values())


class _Counters:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.http_requests = 0
        self.peers: set[object] = set()
        self.requests: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.keys_requested = 0
        self.entries_served = 0


class Emulator:
    """A Stellar RPC emulator on loopback serving ``state``; a context manager.

    ``ledger_step_per_request`` advances the latest ledger after every ``getLedgerEntries``
    answer, so a sweep spans several ledgers as it does against a live network.
    """

    def __init__(
        self,
        state: LedgerState,
        faults: FaultPlan | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        ledger_step_per_request: int = 0,
    ) -> None:
        started = time.perf_counter()
        self._node = RpcNode(state)
        self._build_seconds = time.perf_counter() - started
        self._decider = FaultDecider(FaultPlan())
        self._poisoned_keys: dict[str, str] = {}
        self.set_faults(faults or FaultPlan())
        self._host = host
        self._port = port
        self._step = ledger_step_per_request
        self._counters = _Counters()
        self._all_keys = list(self._node.entries)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.url = ""
        self._methods: dict[str, Callable[[web.Request, Any, Any], Awaitable[web.StreamResponse]]] = {
            "getLedgerEntries": self._get_ledger_entries,
            "simulateTransaction": self._simulate_transaction,
            "getLatestLedger": self._simple("getLatestLedger", self._node.get_latest_ledger),
            "getHealth": self._simple("getHealth", self._node.get_health),
            "getNetwork": self._simple("getNetwork", self._node.get_network),
            "getVersionInfo": self._simple("getVersionInfo", self._node.get_version_info),
            "getEvents": self._with_params("getEvents", self._node.get_events),
            "getTransaction": self._with_params("getTransaction", self._node.get_transaction),
        }

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Emulator:
        if self._thread is not None:
            raise RuntimeError("the emulator is already running")
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._serve, args=(ready, failure), name="stellar-rpc-emulator", daemon=True
        )
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]
        return self

    def stop(self) -> None:
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        self._thread = None
        self._loop = None

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def _serve(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        app = web.Application(client_max_size=_MAX_BODY)
        app.router.add_route("POST", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        try:
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, self._host, self._port, backlog=1024)
            loop.run_until_complete(site.start())
            port = runner.addresses[0][1]
            self.url = f"http://{self._host}:{port}"
            self._loop = loop
        except BaseException as exc:  # handed to start(), which raises it in the caller's thread
            failure.append(exc)
            loop.run_until_complete(runner.cleanup())
            loop.close()
            ready.set()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.close()

    # --- control -----------------------------------------------------------------------------

    @property
    def stats(self) -> EmulatorStats:
        c = self._counters
        with c.lock:
            return EmulatorStats(
                http_requests=c.http_requests,
                connections=len(c.peers),
                requests=MappingProxyType(dict(c.requests)),
                faults=MappingProxyType(dict(c.faults)),
                keys_requested=c.keys_requested,
                entries_served=c.entries_served,
                build_seconds=self._build_seconds,
            )

    @property
    def faults(self) -> FaultPlan:
        return self._decider.plan

    def set_faults(self, faults: FaultPlan) -> None:
        """Replace the fault plan; the draw restarts, as if the emulator were new."""
        self._poisoned_keys = {
            base64.b64encode(encode.instance_key_xdr(contract)).decode(): kind
            for contract, kind in faults.poisoned.items()
        }
        self._decider = FaultDecider(faults)

    @property
    def latest_ledger(self) -> int:
        return self._node.latest_ledger

    def advance_ledger(self, ledgers: int = 1) -> int:
        return self._node.advance(ledgers)

    # --- request handling --------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        with self._counters.lock:
            self._counters.http_requests += 1
            self._counters.peers.add(peer)
        body = await request.read()
        try:
            message = json.loads(body)
        except ValueError:
            return _rpc_error(None, -32700, "parse error: the body is not JSON")
        if not isinstance(message, dict):
            return _rpc_error(None, -32600, "invalid request: batch requests are not supported")
        request_id = message.get("id")
        method = message.get("method")
        if message.get("jsonrpc") != "2.0" or not isinstance(method, str):
            return _rpc_error(request_id, -32600, "invalid request: jsonrpc must be 2.0 and method a string")
        handler = self._methods.get(method)
        if handler is None or method in self.faults.unsupported:
            return _rpc_error(request_id, -32601, f"method not found: {method}")
        with self._counters.lock:
            self._counters.requests[method] += 1
        try:
            return await handler(request, request_id, message.get("params"))
        except RpcError as exc:
            return _rpc_error(request_id, exc.code, exc.message)

    def _simple(
        self, method: str, compute: Callable[[], dict[str, Any]]
    ) -> Callable[[web.Request, Any, Any], Awaitable[web.StreamResponse]]:
        return self._with_params(method, lambda _params: compute())

    def _with_params(
        self, method: str, compute: Callable[[Any], dict[str, Any]]
    ) -> Callable[[web.Request, Any, Any], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request, request_id: Any, params: Any) -> web.StreamResponse:
            kind, _ = self._decider.draw(method, [json.dumps(params, sort_keys=True)])
            if kind in REQUEST_FAULTS:
                return self._request_fault(kind, request, request_id)
            if kind == "delay":
                self._count_fault(kind)
                await asyncio.sleep(self.faults.delay_seconds)
            return _rpc_result(request_id, compute(params))

        return handler

    async def _get_ledger_entries(
        self, request: web.Request, request_id: Any, params: Any
    ) -> web.StreamResponse:
        keys, found = self._node.lookup(params)
        plan = self.faults
        # A poisoned contract is poisoned when asked for, whether or not the state has it.
        poisoned_keys = self._poisoned_keys
        poisoned = (
            [(k, poisoned_keys[k]) for k in dict.fromkeys(keys) if k in poisoned_keys]
            if poisoned_keys
            else []
        )
        kind, rng = self._decider.draw("getLedgerEntries", keys)
        request_kinds = [p for _, p in poisoned if p in REQUEST_FAULTS]
        if request_kinds:
            return self._request_fault(request_kinds[0], request, request_id)
        if kind in REQUEST_FAULTS:
            return self._request_fault(kind, request, request_id)
        if kind == "delay" or any(p == "delay" for _, p in poisoned):
            self._count_fault("delay")
            await asyncio.sleep(plan.delay_seconds)
        fragments = [e.fragment for e in found]
        corrupt = {k for k, p in poisoned if p == "corrupt_xdr"}
        if kind == "corrupt_xdr" and found:
            corrupt.add(rng.choice(found).key)
        if corrupt:
            fragments = [self._corrupt(e, rng) if e.key in corrupt else e.fragment for e in found]
        conflicting = {k for k, p in poisoned if p == "conflicting_entry"}
        if kind == "conflicting_entry" and found:
            conflicting.add(rng.choice(found).key)
        for entry in (e for e in found if e.key in conflicting):
            self._count_fault("conflicting_entry")
            fragments.insert(rng.randrange(len(fragments) + 1), self._conflicting(entry, rng))
        extras = sum(1 for _, p in poisoned if p == "unrequested_entry") + (kind == "unrequested_entry")
        for _ in range(extras):
            self._count_fault("unrequested_entry")
            fragments.insert(rng.randrange(len(fragments) + 1), self._unrequested(set(keys), rng))
        latest = self._node.latest_ledger
        if self._step:
            self._node.advance(self._step)
        with self._counters.lock:
            self._counters.keys_requested += len(keys)
            self._counters.entries_served += len(found)
        return web.Response(
            text=self._node.ledger_entries_body(request_id, fragments, latest), content_type=_JSON
        )

    async def _simulate_transaction(
        self, request: web.Request, request_id: Any, params: Any
    ) -> web.StreamResponse:
        outcome = self._node.simulate(params)
        plan = self.faults
        kind, rng = self._decider.draw("simulateTransaction", [params["transaction"]])
        poisoned = plan.poisoned.get(outcome.contract_id or "")
        for fault in (poisoned, kind):
            if fault in REQUEST_FAULTS:
                return self._request_fault(fault, request, request_id)
        result = outcome.result
        if "delay" in (poisoned, kind):
            self._count_fault("delay")
            await asyncio.sleep(plan.delay_seconds)
        if "corrupt_xdr" in (poisoned, kind) and result.get("results"):
            self._count_fault("corrupt_xdr")
            result = {**result, "results": [{"auth": [], "xdr": _garbage_base64(rng, 64)}]}
        return _rpc_result(request_id, result)

    # --- faults ------------------------------------------------------------------------------

    def _count_fault(self, kind: str) -> None:
        with self._counters.lock:
            self._counters.faults[kind] += 1

    def _request_fault(self, kind: str, request: web.Request, request_id: Any) -> web.StreamResponse:
        self._count_fault(kind)
        plan = self.faults
        if kind == "http_429":
            body = json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": request_id,
                    "error": {"code": RATE_LIMIT_ERROR[0], "message": RATE_LIMIT_ERROR[1]},
                }
            )
            return web.Response(
                status=429,
                text=body,
                content_type=_JSON,
                headers={"Retry-After": retry_after_header(plan.retry_after_seconds)},
            )
        if kind == "http_429_text":
            return web.Response(
                status=429,
                text="429 Too Many Requests\n",
                headers={"Retry-After": retry_after_header(plan.retry_after_seconds)},
            )
        if kind == "http_503":
            return web.Response(status=503, text="503 Service Unavailable: upstream overloaded\n")
        if kind == "http_504":
            return web.Response(
                status=504,
                text="<html><body><h1>504 Gateway Time-out</h1></body></html>",
                content_type="text/html",
            )
        if kind == "non_json":
            return web.Response(
                status=200,
                text="<html><head><title>Maintenance</title></head><body>Back soon.</body></html>",
                content_type="text/html",
            )
        if kind == "drop_connection":
            transport = request.transport
            if transport is not None:
                transport.abort()
            # The handler must still return; aiohttp drops the write on the aborted transport.
            return web.Response(status=500)
        code, message = RPC_ERRORS[kind]
        return _rpc_error(request_id, code, message)

    def _corrupt(self, entry: Entry, rng: random.Random) -> str:
        self._count_fault("corrupt_xdr")
        variant = rng.choice(("truncated", "garbage", "not_base64"))
        if variant == "truncated":
            raw = base64.b64decode(entry.xdr)
            bad = base64.b64encode(raw[: len(raw) // 2]).decode()
        elif variant == "garbage":
            bad = _garbage_base64(rng, len(base64.b64decode(entry.xdr)))
        else:
            bad = "%%not-base64:" + entry.xdr[:16]
        return entry_fragment(entry.key, bad, entry.last_modified, entry.live_until)

    def _conflicting(self, entry: Entry, rng: random.Random) -> str:
        """``entry``'s key a second time in one answer, with another escrow's XDR: an answer that
        contradicts itself, which a client must not settle by picking either copy."""
        other = fragment_xdr(self._unrequested({entry.key}, rng))
        return entry_fragment(entry.key, other, entry.last_modified, entry.live_until)

    def _unrequested(self, requested: set[str], rng: random.Random) -> str:
        for _ in range(8):
            if not self._all_keys:
                break
            key = rng.choice(self._all_keys)
            if key not in requested:
                return self._node.entries[key].fragment
        # Every known key was asked for: make up an escrow nobody asked about.
        spec = EscrowSpec(
            contract_id=random_contract_id(rng),
            invoice_id="UNREQUESTED",
            funded_amount=1,
            amount=1,
            funding_target=1,
            funding_token=random_contract_id(rng),
            admin=random_account_id(rng),
            sme_address=random_account_id(rng),
        )
        key = base64.b64encode(encode.instance_key_xdr(spec.contract_id)).decode()
        xdr = base64.b64encode(encode.escrow_entry_xdr(spec)).decode()
        return entry_fragment(key, xdr, spec.last_modified_ledger, spec.live_until_ledger)


def _garbage_base64(rng: random.Random, size: int) -> str:
    return base64.b64encode(rng.randbytes(max(size, 4))).decode()


def _rpc_result(request_id: Any, result: dict[str, Any]) -> web.Response:
    return web.Response(
        text=json.dumps({"jsonrpc": "2.0", "id": request_id, "result": result}), content_type=_JSON
    )


def _rpc_error(request_id: Any, code: int, message: str) -> web.Response:
    body = {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}
    return web.Response(text=json.dumps(body), content_type=_JSON)


def serve_forever(
    state: LedgerState,
    faults: FaultPlan | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    stop: threading.Event | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve ``state`` until interrupted (Ctrl-C) or ``stop`` is set; ``on_ready`` gets the URL."""
    with Emulator(state, faults, host, port) as emulator:
        log.info("Stellar RPC emulator serving %d escrows at %s", len(state.escrows), emulator.url)
        if on_ready is not None:
            on_ready(emulator.url)
        try:
            (stop or threading.Event()).wait()
        except KeyboardInterrupt:
            pass
