"""What the chain says happened to escrows: their contract events and the database's transactions.

Two reads, both through :class:`~reconcile_audit.compute.ledger.rpc.RpcClient`:

- :func:`scan_events`: one topic-filtered ``getEvents`` scan from ``start_ledger`` to the latest
  ledger, serving every escrow at once. With one contract per invoice, thousands of escrows cannot
  be named in filters (5 filters of 5 contract ids), so the filter names the escrow contract's
  event names (topic 0) and the answer is matched to escrows by ``contractId`` here. It pages on
  the ``cursor`` until the cursor reaches the latest ledger: a page ends when it holds ``limit``
  events or when the request has scanned its 10,000 ledgers.
- :func:`lookup_transactions`: ``getTransaction`` for each hash, with bounded concurrency.

Decoding uses stellar-sdk's XDR types and ``scval`` helpers: topics and data are ScVals.
Neither read raises for what the RPC answers: a method the RPC lacks or a fault after retries
becomes ``unavailable`` with its reason, so an explanation can say so and the run goes on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

from stellar_sdk import StrKey, scval
from stellar_sdk import xdr as stellar_xdr
from stellar_sdk.soroban_rpc import (
    EventFilter,
    EventFilterType,
    EventInfo,
    GetEventsRequest,
    GetEventsResponse,
    GetHealthResponse,
    GetTransactionResponse,
    PaginationOptions,
)

from reconcile_audit.compute.ledger.rpc import RetryPolicy, RpcClient, RpcFault, client_for, run_sync
from reconcile_audit.compute.settings import Settings

log = logging.getLogger(__name__)

# The escrow contract's events (escrow/src/lib.rs, docs/domain.md): topic 0 -> the topics after
# the short label (topic 1).
ESCROW_EVENTS: Final[Mapping[str, tuple[str, ...]]] = {
    "escrow_funded": ("invoice_id", "investor"),
    "escrow_unfunded": ("invoice_id", "investor"),
    "investor_refunded_evt": ("investor", "invoice_id"),
    "sme_withdrew": ("invoice_id",),
    "funding_cancelled": ("invoice_id",),
    "escrow_settled": ("invoice_id",),
    "funding_target_updated": ("invoice_id",),
    "treasury_dust_swept": (),
    "contract_upgraded": ("invoice_id",),
}
PAGE_LIMIT: Final = 10_000  # getEvents' largest page
MAX_PATTERNS_PER_FILTER: Final = 5
MAX_PAGES: Final = 10_000  # a guard against an RPC whose cursor never moves on


@dataclass(frozen=True)
class EscrowEvent:
    """One decoded escrow event. ``amounts`` holds the data's integer fields (i128 and u32) exactly;
    ``fields`` the rest as text (addresses as strkeys, symbols as text, bytes as hex)."""

    ledger: int
    closed_at: datetime
    contract_id: str
    tx_hash: str
    event: str
    invoice_id: str | None
    investor: str | None
    amounts: Mapping[str, int] = field(default_factory=dict)
    fields: Mapping[str, str] = field(default_factory=dict)
    event_id: str = ""


def _native(value: stellar_xdr.SCVal) -> int | str:
    kind = value.type
    if kind == stellar_xdr.SCValType.SCV_I128:
        return scval.from_int128(value)
    if kind == stellar_xdr.SCValType.SCV_U32:
        return scval.from_uint32(value)
    if kind == stellar_xdr.SCValType.SCV_U64:
        return scval.from_uint64(value)
    if kind == stellar_xdr.SCValType.SCV_SYMBOL:
        return scval.from_symbol(value)
    if kind == stellar_xdr.SCValType.SCV_STRING:
        return scval.from_string(value).decode("utf-8", "replace")
    if kind == stellar_xdr.SCValType.SCV_ADDRESS:
        return scval.from_address(value).address
    if kind == stellar_xdr.SCValType.SCV_BYTES:
        return scval.from_bytes(value).hex()
    raise ValueError(f"an ScVal of type {kind.name} where the escrow contract puts a plain value")


def decode_event(
    topic: list[str],
    value: str,
    *,
    ledger: int,
    closed_at: datetime,
    contract_id: str,
    tx_hash: str,
    event_id: str = "",
) -> EscrowEvent:
    """An escrow event from its base64 topics and data; ``ValueError`` for anything else."""
    try:
        topics = [stellar_xdr.SCVal.from_xdr(t) for t in topic]
        data = stellar_xdr.SCVal.from_xdr(value)
    except Exception as exc:
        raise ValueError(f"undecodable event XDR: {type(exc).__name__}") from exc
    if not topics or topics[0].type != stellar_xdr.SCValType.SCV_SYMBOL:
        raise ValueError("topic 0 is not a symbol")
    name = scval.from_symbol(topics[0])
    rest = ESCROW_EVENTS.get(name)
    if rest is None:
        raise ValueError(f"{name!r} is not an escrow event")
    if len(topics) != 2 + len(rest):
        raise ValueError(f"{name} has {len(topics)} topics, expected {2 + len(rest)}")
    named = {part: str(_native(t)) for part, t in zip(rest, topics[2:], strict=True)}
    if data.type != stellar_xdr.SCValType.SCV_MAP or data.map is None:
        raise ValueError(f"{name}'s data is not a map")
    amounts: dict[str, int] = {}
    fields: dict[str, str] = {}
    for entry in data.map.sc_map:
        key = str(_native(entry.key))
        native = _native(entry.val)
        if isinstance(native, int):
            amounts[key] = native
        else:
            fields[key] = native
    return EscrowEvent(
        ledger=ledger,
        closed_at=closed_at,
        contract_id=contract_id,
        tx_hash=tx_hash,
        event=name,
        invoice_id=named.get("invoice_id", fields.get("invoice_id")),
        investor=named.get("investor"),
        amounts=amounts,
        fields=fields,
        event_id=event_id,
    )


def _from_info(info: EventInfo) -> EscrowEvent:
    return decode_event(
        info.topic,
        info.value,
        ledger=info.ledger,
        closed_at=info.ledger_close_at.astimezone(UTC),
        contract_id=info.contract_id,
        tx_hash=info.transaction_hash,
        event_id=info.id,
    )


def event_filters() -> list[EventFilter]:
    """Contract events whose topic 0 is an escrow event name, whatever follows: the fewest filters
    getEvents allows (5 topic patterns each)."""
    patterns = [[scval.to_symbol(name).to_xdr(), "**"] for name in ESCROW_EVENTS]
    return [
        EventFilter(event_type=EventFilterType.CONTRACT, topics=patterns[i : i + MAX_PATTERNS_PER_FILTER])
        for i in range(0, len(patterns), MAX_PATTERNS_PER_FILTER)
    ]


@dataclass(frozen=True)
class EventScan:
    """The escrow events of ``contract_ids`` from ``start_ledger`` to ``latest_ledger``, or why not."""

    events: tuple[EscrowEvent, ...] = ()
    start_ledger: int | None = None
    latest_ledger: int | None = None
    oldest_ledger: int | None = None  # the RPC's retention window starts here
    oldest_closed_at: datetime | None = None  # when that ledger closed
    requests: int = 0
    undecodable: int = 0  # events under an escrow event name whose XDR did not decode
    unavailable: str | None = None


@dataclass(frozen=True)
class TransactionLookup:
    """``getTransaction``'s answer for one hash: SUCCESS, FAILED or NOT_FOUND, or ``unavailable``."""

    tx_hash: str
    status: str
    ledger: int | None = None
    closed_at: datetime | None = None
    oldest_ledger: int | None = None
    oldest_closed_at: datetime | None = None  # when the RPC's oldest ledger closed
    events: tuple[EscrowEvent, ...] = ()
    unavailable: str | None = None


@dataclass(frozen=True)
class ChainActivity:
    """Both reads of one explain stage."""

    scan: EventScan
    transactions: Mapping[str, TransactionLookup]


def read_activity(
    settings: Settings,
    *,
    contract_ids: Iterable[str],
    start_ledger: int | None,
    tx_hashes: Iterable[str],
    policy: RetryPolicy | None = None,
) -> ChainActivity:
    """The events of ``contract_ids`` since ``start_ledger`` (None: the start of the RPC's window,
    and a ledger before it is moved up to it) and each of ``tx_hashes``, in one RPC session."""
    wanted = frozenset(contract_ids)
    hashes = sorted(set(tx_hashes))

    async def both() -> ChainActivity:
        async with client_for(settings, policy or RetryPolicy()) as client:
            # The scan pages one after another on its cursor; the lookups run beside it.
            scan, found = await asyncio.gather(
                _scan(client, wanted, start_ledger) if wanted else _no_scan(),
                _lookups(client, hashes, max(1, settings.rpc_concurrency)),
            )
        return ChainActivity(scan, found)

    return run_sync(both)


async def _scan(client: RpcClient, wanted: frozenset[str], start_ledger: int | None) -> EventScan:
    try:
        health = await client.call("getHealth", None, GetHealthResponse)
    except RpcFault as fault:
        return EventScan(unavailable=f"getHealth: {fault}")
    oldest = health.oldest_ledger
    start = oldest if start_ledger is None else max(start_ledger, oldest)
    if start > health.latest_ledger:
        return EventScan(start_ledger=start, latest_ledger=health.latest_ledger, oldest_ledger=oldest)
    filters = event_filters()
    events: list[EscrowEvent] = []
    undecodable = 0
    requests = 0
    # By alias: the model does not populate by field name, and would drop start_ledger silently.
    request = GetEventsRequest.model_validate(
        {"startLedger": start, "filters": filters, "pagination": PaginationOptions(limit=PAGE_LIMIT)}
    )
    latest = health.latest_ledger
    while True:
        requests += 1
        try:
            page = await client.call(
                "getEvents",
                request.model_dump(by_alias=True, exclude_none=True, mode="json"),
                GetEventsResponse,
            )
        except RpcFault as fault:
            return EventScan(
                start_ledger=start, oldest_ledger=oldest, requests=requests, unavailable=f"getEvents: {fault}"
            )
        latest = page.latest_ledger
        oldest = page.oldest_ledger
        oldest_closed_at = datetime.fromtimestamp(page.oldest_ledger_close_time, UTC)
        for info in page.events:
            if info.contract_id not in wanted:
                continue
            try:
                events.append(_from_info(info))
            except ValueError as exc:
                undecodable += 1
                log.warning("an escrow event of %s did not decode (%s): %s", info.contract_id, info.id, exc)
        cursor_ledger = _cursor_ledger(page.cursor)
        done = (
            not page.cursor
            or cursor_ledger is None
            or (cursor_ledger >= latest and len(page.events) < PAGE_LIMIT)
        )
        if done or requests >= MAX_PAGES:
            break
        request = GetEventsRequest(
            filters=filters, pagination=PaginationOptions(cursor=page.cursor, limit=PAGE_LIMIT)
        )
    if requests >= MAX_PAGES:
        return EventScan(
            start_ledger=start,
            oldest_ledger=oldest,
            requests=requests,
            unavailable=f"getEvents: the cursor did not reach the latest ledger in {MAX_PAGES} pages",
        )
    return EventScan(tuple(events), start, latest, oldest, oldest_closed_at, requests, undecodable)


async def _no_scan() -> EventScan:
    return EventScan()


def _cursor_ledger(cursor: str | None) -> int | None:
    """The ledger a getEvents cursor points at (its TOID's upper 32 bits)."""
    if not cursor:
        return None
    head = cursor.split("-", 1)[0]
    return int(head) >> 32 if head.isdigit() else None


async def _lookups(client: RpcClient, hashes: list[str], concurrency: int) -> dict[str, TransactionLookup]:
    gate = asyncio.Semaphore(concurrency)

    async def one(tx_hash: str) -> TransactionLookup:
        async with gate:
            try:
                answer = await client.call("getTransaction", {"hash": tx_hash}, GetTransactionResponse)
            except RpcFault as fault:
                return TransactionLookup(tx_hash, "unavailable", unavailable=f"getTransaction: {fault}")
        return _lookup(tx_hash, answer)

    return {lookup.tx_hash: lookup for lookup in await asyncio.gather(*(one(h) for h in hashes))}


def _lookup(tx_hash: str, answer: GetTransactionResponse) -> TransactionLookup:
    status = answer.status.value
    closed = datetime.fromtimestamp(answer.create_at, UTC) if answer.create_at is not None else None
    events: list[EscrowEvent] = []
    groups = answer.events.contract_events_xdr if answer.events is not None else None
    for group in groups or []:
        for raw in group:
            try:
                event = stellar_xdr.ContractEvent.from_xdr(raw)
                body = event.body.v0
                if body is None or event.contract_id is None:
                    continue
                contract = StrKey.encode_contract(event.contract_id.contract_id.hash)
                events.append(
                    decode_event(
                        [t.to_xdr() for t in body.topics],
                        body.data.to_xdr(),
                        ledger=answer.ledger or 0,
                        closed_at=closed or datetime.fromtimestamp(0, UTC),
                        contract_id=contract,
                        tx_hash=tx_hash,
                    )
                )
            except Exception as exc:  # a token's transfer in the same call, or undecodable: not ours
                log.debug("transaction %s: an event that is no escrow event (%s)", tx_hash, exc)
                continue
    return TransactionLookup(
        tx_hash,
        status,
        answer.ledger,
        closed,
        answer.oldest_ledger,
        datetime.fromtimestamp(answer.oldest_ledger_close_time, UTC),
        tuple(events),
    )
