"""What happened on chain: the escrow contracts' events and the transactions that emitted them.

The emulator keeps an event log and a transaction table beside the ledger state it serves, and
answers ``getEvents`` and ``getTransaction`` from them as stellar-rpc does:

- ``getEvents``: up to 5 filters, each with up to 5 contract ids and up to 5 topic patterns of 1
  to 4 segments (a base64 ScVal, ``*`` for any one topic, or a trailing ``**`` for any rest);
  ``limit`` 1 to 10,000 (default 100); one request scans at most 10,000 ledgers, and the answer's
  ``cursor`` says where to go on, whether the page filled or the scan ran out of ledgers;
  ``startLedger`` must lie within the retention window, and events older than it are gone.
- ``getTransaction``: SUCCESS or FAILED with the envelope, the result and the contract events, or
  NOT_FOUND for a hash the table lacks or one older than the retention window.

Everything is real XDR built with stellar-sdk: a ``ContractEvent``'s topics and data are ScVals,
the envelope is a ``TransactionEnvelope`` whose hash is the transaction's hash on the network.
"""

from __future__ import annotations

import base64
import bisect
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from stellar_sdk import Account, Keypair, StrKey, TransactionBuilder, scval
from stellar_sdk import xdr as stellar_xdr

from reconcile_audit.emulator.jsonrpc import RpcError

MAX_FILTERS: Final = 5
MAX_CONTRACT_IDS: Final = 5
MAX_TOPIC_PATTERNS: Final = 5
MAX_SEGMENTS: Final = 4
MAX_LIMIT: Final = 10_000
DEFAULT_LIMIT: Final = 100
MAX_SCAN_LEDGERS: Final = 10_000  # ledgers one getEvents request looks at
CLOSE_TIME_BASE: Final = 1_700_000_000  # ledger N closed at CLOSE_TIME_BASE + 5 N (rpc.py)
SECONDS_PER_LEDGER: Final = 5

# The escrow contract's events (escrow/src/lib.rs): name -> (short label, topics after the label).
ESCROW_EVENTS: Final[Mapping[str, tuple[str, tuple[str, ...]]]] = {
    "escrow_funded": ("funded", ("invoice_id", "investor")),
    "escrow_unfunded": ("unfunded", ("invoice_id", "investor")),
    "investor_refunded_evt": ("refunded", ("investor", "invoice_id")),
    "sme_withdrew": ("sme_wd", ("invoice_id",)),
    "funding_cancelled": ("fund_can", ("invoice_id",)),
    "escrow_settled": ("escrow_sd", ("invoice_id",)),
    "funding_target_updated": ("fund_tgt", ("invoice_id",)),
    "treasury_dust_swept": ("dust_sw", ()),
    "contract_upgraded": ("upgrade", ("invoice_id",)),
}
# Data fields that are i128 amounts, addresses or u32; every other field is a symbol or bytes.
_I128_FIELDS: Final = frozenset(
    {
        "amount",
        "funded_amount",
        "remaining_contribution",
        "new_funded_amount",
        "fee",
        "old_target",
        "new_target",
    }
)
_ADDRESS_FIELDS: Final = frozenset({"recipient", "token"})
_U32_FIELDS: Final = frozenset({"status"})
_HEX64: Final = re.compile(r"[0-9a-fA-F]{64}")
_CURSOR: Final = re.compile(r"(\d{1,19})-(\d{1,10})")


def close_time(ledger: int) -> int:
    return CLOSE_TIME_BASE + ledger * SECONDS_PER_LEDGER


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def toid(ledger: int, transaction_index: int, operation_index: int) -> int:
    """SEP-35's total order id, which stellar-rpc's event ids and cursors are built on."""
    return (ledger << 32) | (transaction_index << 12) | operation_index


def event_id(ledger: int, transaction_index: int, operation_index: int, event_index: int) -> str:
    return f"{toid(ledger, transaction_index, operation_index):019d}-{event_index:010d}"


@dataclass(frozen=True)
class ChainEvent:
    """One contract event as the log keeps it: its place, and its topics and data as ScVal XDR."""

    ledger: int
    transaction_index: int  # the transaction's application order in its ledger, from 1
    operation_index: int
    event_index: int
    contract_id: str
    tx_hash: str
    topic: tuple[str, ...]  # base64 ScVal
    value: str  # base64 ScVal
    successful: bool = True

    @property
    def id(self) -> str:
        return event_id(self.ledger, self.transaction_index, self.operation_index, self.event_index)

    def xdr(self) -> stellar_xdr.ContractEvent:
        """The ``ContractEvent`` a transaction's meta carries for it."""
        return stellar_xdr.ContractEvent(
            ext=stellar_xdr.ExtensionPoint(0),
            contract_id=stellar_xdr.ContractID(stellar_xdr.Hash(StrKey.decode_contract(self.contract_id))),
            type=stellar_xdr.ContractEventType.CONTRACT,
            body=stellar_xdr.ContractEventBody(
                0,
                v0=stellar_xdr.ContractEventV0(
                    topics=[stellar_xdr.SCVal.from_xdr(t) for t in self.topic],
                    data=stellar_xdr.SCVal.from_xdr(self.value),
                ),
            ),
        )


@dataclass(frozen=True)
class ChainTransaction:
    """A transaction the RPC knows: where it landed, whether it succeeded, and its XDR."""

    tx_hash: str
    ledger: int
    application_order: int
    successful: bool
    envelope_xdr: str
    events: tuple[ChainEvent, ...] = ()


def _field_val(name: str, value: Any) -> stellar_xdr.SCVal:
    if name in _I128_FIELDS:
        return scval.to_int128(int(value))
    if name in _ADDRESS_FIELDS:
        return scval.to_address(str(value))
    if name in _U32_FIELDS:
        return scval.to_uint32(int(value))
    if name == "new_wasm_hash":
        return scval.to_bytes(bytes(value))
    return scval.to_symbol(str(value))


def escrow_event_xdr(
    name: str, *, invoice_id: str, investor: str | None = None, **data: Any
) -> tuple[tuple[str, ...], str]:
    """The topics and data of one escrow event, as the contract emits them (``ESCROW_EVENTS``):
    topic 0 the event name, topic 1 its short label, then the invoice id and the investor where
    the event has them; the data an ScMap of the remaining fields, sorted by name."""
    label, rest = ESCROW_EVENTS[name]
    topics = [scval.to_symbol(name), scval.to_symbol(label)]
    for part in rest:
        if part == "invoice_id":
            topics.append(scval.to_symbol(invoice_id))
        elif investor is None:
            raise ValueError(f"{name} names an investor in its topics")
        else:
            topics.append(scval.to_address(investor))
    if name == "treasury_dust_swept":
        data = {"invoice_id": invoice_id, **data}
    value = scval.to_map({scval.to_symbol(k): _field_val(k, v) for k, v in sorted(data.items())})
    return tuple(t.to_xdr() for t in topics), value.to_xdr()


def transaction_envelope(
    *, contract_id: str, function: str, source_seed: bytes, sequence: int, network_passphrase: str
) -> tuple[str, str]:
    """An unsigned ``InvokeHostFunction`` envelope calling ``function`` on ``contract_id``, and its
    hash on ``network_passphrase``: the hash a backend stores as ``stellar_transaction_hash``."""
    source = Keypair.from_raw_ed25519_seed(source_seed[:32].ljust(32, b"\0"))
    transaction = (
        TransactionBuilder(Account(source.public_key, sequence), network_passphrase, base_fee=100)
        .append_invoke_contract_function_op(contract_id, function, [])
        .add_time_bounds(0, 0)  # no wall clock in it: the same call has the same hash every run
        .build()
    )
    return transaction.to_xdr(), transaction.hash_hex()


def _result_xdr(successful: bool) -> str:
    if successful:
        inner = stellar_xdr.InvokeHostFunctionResult(
            stellar_xdr.InvokeHostFunctionResultCode.INVOKE_HOST_FUNCTION_SUCCESS,
            success=stellar_xdr.Hash(bytes(32)),
        )
    else:
        inner = stellar_xdr.InvokeHostFunctionResult(
            stellar_xdr.InvokeHostFunctionResultCode.INVOKE_HOST_FUNCTION_TRAPPED
        )
    operation = stellar_xdr.OperationResult(
        stellar_xdr.OperationResultCode.opINNER,
        tr=stellar_xdr.OperationResultTr(
            stellar_xdr.OperationType.INVOKE_HOST_FUNCTION, invoke_host_function_result=inner
        ),
    )
    code = (
        stellar_xdr.TransactionResultCode.txSUCCESS
        if successful
        else stellar_xdr.TransactionResultCode.txFAILED
    )
    result = stellar_xdr.TransactionResult(
        fee_charged=stellar_xdr.Int64(100_000),
        result=stellar_xdr.TransactionResultResult(code, results=[operation]),
        ext=stellar_xdr.TransactionResultExt(0),
    )
    return result.to_xdr()


@dataclass(frozen=True)
class _Filter:
    event_type: str | None
    contract_ids: frozenset[str] | None
    topics: tuple[tuple[str, ...], ...] | None

    def matches(self, event: ChainEvent) -> bool:
        if self.event_type not in (None, "contract"):
            return False
        if self.contract_ids is not None and event.contract_id not in self.contract_ids:
            return False
        return self.topics is None or any(_topic_matches(p, event.topic) for p in self.topics)


def _topic_matches(pattern: tuple[str, ...], topic: tuple[str, ...]) -> bool:
    if pattern and pattern[-1] == "**":
        head = pattern[:-1]
        if len(topic) < len(head):
            return False
    else:
        head = pattern
        if len(topic) != len(head):
            return False
    return all(segment in ("*", value) for segment, value in zip(head, topic, strict=False))


def _invalid(message: str) -> RpcError:
    return RpcError(-32602, message)


def _parse_filters(raw: Any) -> list[_Filter]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _invalid("filters must be a list")
    if len(raw) > MAX_FILTERS:
        raise _invalid(f"maximum {MAX_FILTERS} filters per request")
    parsed = []
    for index, item in enumerate(raw, 1):
        if not isinstance(item, dict):
            raise _invalid(f"filter {index} invalid: not an object")
        event_type = item.get("type")
        if event_type not in (None, "", "contract", "system", "diagnostic"):
            raise _invalid(
                f"filter {index} invalid: if set, type must be either 'system', 'contract' or 'diagnostic'"
            )
        contract_ids = item.get("contractIds")
        if contract_ids is not None:
            if not isinstance(contract_ids, list) or len(contract_ids) > MAX_CONTRACT_IDS:
                raise _invalid(f"filter {index} invalid: maximum {MAX_CONTRACT_IDS} contract IDs per filter")
            for contract_id in contract_ids:
                if not (isinstance(contract_id, str) and StrKey.is_valid_contract(contract_id)):
                    raise _invalid(f"filter {index} invalid: contract ID {contract_id!r} is invalid")
        topics = item.get("topics")
        if topics is not None:
            if not isinstance(topics, list) or len(topics) > MAX_TOPIC_PATTERNS:
                raise _invalid(f"filter {index} invalid: maximum {MAX_TOPIC_PATTERNS} topics per filter")
            for pattern in topics:
                _check_pattern(index, pattern)
        parsed.append(
            _Filter(
                event_type or None,
                None if contract_ids is None else frozenset(contract_ids),
                None if topics is None else tuple(tuple(p) for p in topics),
            )
        )
    return parsed


def _check_pattern(index: int, pattern: Any) -> None:
    where = f"filter {index} invalid: topic"
    if not isinstance(pattern, list) or not 1 <= len(pattern) <= MAX_SEGMENTS:
        raise _invalid(f"{where} must have between 1 and {MAX_SEGMENTS} segments")
    for position, segment in enumerate(pattern):
        if segment == "**":
            if position != len(pattern) - 1:
                raise _invalid(f"{where}: '**' is only allowed as the last segment")
            continue
        if segment == "*":
            continue
        try:
            stellar_xdr.SCVal.from_xdr(segment)
        except Exception as exc:
            raise _invalid(f"{where} segment {position + 1} is not a base64 ScVal") from exc


@dataclass
class ActivityLog:
    """The events, sorted by id, and the transactions by hash. ``window`` is the retention in ledgers."""

    events: Sequence[ChainEvent]
    transactions: Mapping[str, ChainTransaction]
    window: int
    _keys: list[tuple[int, int]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.events = sorted(
            self.events, key=lambda e: (toid(e.ledger, e.transaction_index, e.operation_index), e.event_index)
        )
        self._keys = [
            (toid(e.ledger, e.transaction_index, e.operation_index), e.event_index) for e in self.events
        ]

    def oldest(self, latest: int) -> int:
        return max(1, latest - self.window + 1)

    def get_events(self, params: Any, latest: int) -> dict[str, Any]:
        if not isinstance(params, dict):
            raise _invalid("invalid parameters: expected an object")
        oldest = self.oldest(latest)
        pagination = params.get("pagination") or {}
        if not isinstance(pagination, dict):
            raise _invalid("pagination must be an object")
        limit = pagination.get("limit", DEFAULT_LIMIT) or DEFAULT_LIMIT
        if not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            raise _invalid(f"limit must not exceed {MAX_LIMIT}")
        cursor = pagination.get("cursor")
        start_ledger = params.get("startLedger")
        end_ledger = params.get("endLedger")
        if cursor is not None:
            if start_ledger not in (None, 0):
                raise _invalid("startLedger and cursor cannot both be set")
            match = _CURSOR.fullmatch(str(cursor))
            if match is None:
                raise _invalid(f"invalid cursor {cursor!r}")
            after = (int(match.group(1)), int(match.group(2)))
            position = bisect.bisect_right(self._keys, after)
            scan_from = max(after[0] >> 32, oldest)
        else:
            if not isinstance(start_ledger, int) or isinstance(start_ledger, bool):
                raise _invalid("startLedger must be set when no cursor is given")
            if not oldest <= start_ledger <= latest:
                raise RpcError(
                    -32600,
                    f"startLedger must be between the oldest ledger: {oldest} and the latest ledger: {latest}",
                )
            scan_from = start_ledger
            position = bisect.bisect_left(self._keys, (toid(start_ledger, 0, 0), 0))
        if end_ledger is not None and (not isinstance(end_ledger, int) or end_ledger <= scan_from):
            raise _invalid("endLedger must be after startLedger")
        filters = _parse_filters(params.get("filters"))
        # The ledgers this request may look at: [scan_from, scan_end).
        scan_end = min(scan_from + MAX_SCAN_LEDGERS, latest + 1, end_ledger or latest + 1)
        found: list[ChainEvent] = []
        while position < len(self.events) and len(found) < limit:
            event = self.events[position]
            if event.ledger >= scan_end:
                break
            position += 1
            if event.ledger < oldest:
                continue  # past retention: the RPC no longer has it
            if not filters or any(f.matches(event) for f in filters):
                found.append(event)
        if len(found) >= limit:
            next_cursor = found[-1].id
        else:
            # The scan ran out of ledgers: go on from the first ledger it did not look at.
            next_cursor = f"{toid(scan_end, 0, 0):019d}-{0:010d}"
        return {
            "events": [self._event_json(e) for e in found],
            "latestLedger": latest,
            "oldestLedger": oldest,
            "latestLedgerCloseTime": str(close_time(latest)),
            "oldestLedgerCloseTime": str(close_time(oldest)),
            "cursor": next_cursor,
        }

    @staticmethod
    def _event_json(event: ChainEvent) -> dict[str, Any]:
        closed = datetime.fromtimestamp(close_time(event.ledger), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {
            "type": "contract",
            "ledger": event.ledger,
            "ledgerClosedAt": closed,
            "contractId": event.contract_id,
            "id": event.id,
            "operationIndex": event.operation_index,
            "transactionIndex": event.transaction_index,
            "txHash": event.tx_hash,
            "inSuccessfulContractCall": event.successful,
            "topic": list(event.topic),
            "value": event.value,
        }

    def get_transaction(self, params: Any, latest: int) -> dict[str, Any]:
        tx_hash = params.get("hash") if isinstance(params, dict) else None
        if not isinstance(tx_hash, str) or not _HEX64.fullmatch(tx_hash):
            raise _invalid("invalid parameters: hash must be 64 hexadecimal characters")
        oldest = self.oldest(latest)
        answer: dict[str, Any] = {
            "status": "NOT_FOUND",
            "txHash": tx_hash.lower(),
            "latestLedger": latest,
            "latestLedgerCloseTime": str(close_time(latest)),
            "oldestLedger": oldest,
            "oldestLedgerCloseTime": str(close_time(oldest)),
        }
        transaction = self.transactions.get(tx_hash.lower())
        if transaction is None or not oldest <= transaction.ledger <= latest:
            return answer
        answer.update(
            status="SUCCESS" if transaction.successful else "FAILED",
            applicationOrder=transaction.application_order,
            feeBump=False,
            envelopeXdr=transaction.envelope_xdr,
            resultXdr=_result_xdr(transaction.successful),
            ledger=transaction.ledger,
            createdAt=str(close_time(transaction.ledger)),
            events={
                "transactionEventsXdr": [],
                "contractEventsXdr": [[_b64(e.xdr().to_xdr_bytes()) for e in transaction.events]],
            },
        )
        return answer


def escrow_transaction(
    event: str,
    *,
    contract_id: str,
    invoice_id: str,
    ledger: int,
    network_passphrase: str,
    application_order: int = 1,
    successful: bool = True,
    function: str | None = None,
    investor: str | None = None,
    **data: Any,
) -> ChainTransaction:
    """One call of the escrow contract that landed at ``ledger``: its envelope and hash, and, when
    it succeeded, the ``event`` it emitted (a failed call emits none)."""
    envelope, tx_hash = transaction_envelope(
        contract_id=contract_id,
        function=function or event,
        source_seed=f"{contract_id}:{event}:{ledger}".encode(),
        sequence=ledger,
        network_passphrase=network_passphrase,
    )
    events: tuple[ChainEvent, ...] = ()
    if successful:
        topic, value = escrow_event_xdr(event, invoice_id=invoice_id, investor=investor, **data)
        events = (ChainEvent(ledger, application_order, 0, 0, contract_id, tx_hash, topic, value),)
    return ChainTransaction(tx_hash, ledger, application_order, successful, envelope, events)
