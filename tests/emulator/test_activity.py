"""The emulator's getEvents and getTransaction, and the explain stage's reader of them, over real
HTTP with real XDR. stellar-sdk is the oracle: its client parses every answer, its ``scval`` and
XDR types build and read every topic and datum."""

from __future__ import annotations

import json
import random
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from stellar_sdk import SorobanServer, scval
from stellar_sdk import xdr as stellar_xdr
from stellar_sdk.exceptions import SorobanRpcErrorResponse
from stellar_sdk.soroban_rpc import EventFilter, EventFilterType, GetTransactionStatus

from reconcile_audit.compute.ledger import activity as reader
from reconcile_audit.emulator import (
    Emulator,
    FaultPlan,
    LedgerState,
    activity,
    random_account_id,
    random_contract_id,
)
from reconcile_audit.emulator.state import TESTNET
from tests.factories import settings as make_settings

LATEST = 1_000_000
RNG = random.Random(12)
ESCROW = random_contract_id(RNG)
OTHER = random_contract_id(RNG)
INVESTOR = random_account_id(RNG)
SME = random_account_id(RNG)
TOKEN = random_contract_id(RNG)

# Every event the escrow contract emits, with the data its source gives it.
EVERY_EVENT = {
    "escrow_funded": {
        "investor": INVESTOR,
        "amount": 250 * 10**7,
        "funded_amount": 1_250 * 10**7,
        "status": 1,
    },
    "escrow_unfunded": {
        "investor": INVESTOR,
        "amount": 50 * 10**7,
        "remaining_contribution": 0,
        "new_funded_amount": 1_200 * 10**7,
    },
    "investor_refunded_evt": {"investor": INVESTOR, "amount": -(2**127)},  # i128's edge, exactly
    "sme_withdrew": {"amount": 1_196 * 10**7, "recipient": SME, "fee": 4 * 10**7},
    "funding_cancelled": {"funded_amount": 1_200 * 10**7},
    "escrow_settled": {"funded_amount": 2**127 - 1},
    "funding_target_updated": {"old_target": 1_000 * 10**7, "new_target": 1_200 * 10**7},
    "treasury_dust_swept": {"recipient": SME, "token": TOKEN, "amount": 37},
    "contract_upgraded": {"new_wasm_hash": bytes(range(32))},
}


def _tx(event: str, ledger: int, contract: str = ESCROW, **data: object) -> activity.ChainTransaction:
    return activity.escrow_transaction(
        event, contract_id=contract, invoice_id="INV_1", ledger=ledger, network_passphrase=TESTNET, **data
    )


@pytest.fixture
def served() -> Iterator[tuple[Emulator, tuple[activity.ChainTransaction, ...]]]:
    transactions = tuple(
        _tx(name, LATEST - 1_000 + n, **data) for n, (name, data) in enumerate(EVERY_EVENT.items())
    )
    state = LedgerState(latest_ledger=LATEST, escrows=(), transactions=transactions)
    with Emulator(state) as emulator:
        yield emulator, transactions


def test_every_escrow_event_decodes_to_what_stellar_sdk_encoded(served) -> None:  # type: ignore[no-untyped-def]
    emulator, transactions = served
    server = SorobanServer(emulator.url)
    answer = server.get_events(LATEST - 1_000, filters=reader.event_filters(), limit=100)
    assert [e.ledger for e in answer.events] == [t.ledger for t in transactions]
    for info, (name, data) in zip(answer.events, EVERY_EVENT.items(), strict=True):
        # The oracle: stellar-sdk reads the topics it wrote.
        topics = [stellar_xdr.SCVal.from_xdr(t) for t in info.topic]
        assert scval.from_symbol(topics[0]) == name
        assert scval.from_symbol(topics[1]) == activity.ESCROW_EVENTS[name][0]
        event = reader.decode_event(
            info.topic,
            info.value,
            ledger=info.ledger,
            closed_at=info.ledger_close_at,
            contract_id=info.contract_id,
            tx_hash=info.transaction_hash,
        )
        assert event.event == name and event.contract_id == ESCROW
        assert event.tx_hash == transactions[list(EVERY_EVENT).index(name)].tx_hash
        assert event.invoice_id == "INV_1"
        assert event.investor == data.get("investor")
        expected_amounts = {k: v for k, v in data.items() if isinstance(v, int)}
        assert dict(event.amounts) == expected_amounts
        if "recipient" in data:
            assert event.fields["recipient"] == data["recipient"]
        if name == "contract_upgraded":
            assert event.fields["new_wasm_hash"] == bytes(range(32)).hex()


def test_decode_refuses_what_is_not_an_escrow_event() -> None:
    transfer = [scval.to_symbol("transfer").to_xdr(), scval.to_address(INVESTOR).to_xdr()]
    with pytest.raises(ValueError, match="not an escrow event"):
        reader.decode_event(
            transfer,
            scval.to_int128(5).to_xdr(),
            ledger=1,
            closed_at=datetime.now(UTC),
            contract_id=ESCROW,
            tx_hash="",
        )
    topics, value = activity.escrow_event_xdr(
        "escrow_funded", invoice_id="INV_1", investor=INVESTOR, amount=1
    )
    with pytest.raises(ValueError, match="topics"):
        reader.decode_event(
            list(topics[:2]), value, ledger=1, closed_at=datetime.now(UTC), contract_id=ESCROW, tx_hash=""
        )
    with pytest.raises(ValueError, match="undecodable"):
        reader.decode_event(
            list(topics), "@@@", ledger=1, closed_at=datetime.now(UTC), contract_id=ESCROW, tx_hash=""
        )


def test_get_transaction_answers_success_failed_and_not_found(served) -> None:  # type: ignore[no-untyped-def]
    emulator, transactions = served
    server = SorobanServer(emulator.url)
    landed = server.get_transaction(transactions[0].tx_hash)
    assert landed.status == GetTransactionStatus.SUCCESS
    assert landed.ledger == transactions[0].ledger
    # The envelope's own hash is the transaction's hash: what a backend stores.
    envelope = stellar_xdr.TransactionEnvelope.from_xdr(landed.envelope_xdr)
    assert envelope.v1 is not None
    result = stellar_xdr.TransactionResult.from_xdr(landed.result_xdr)
    assert result.result.code == stellar_xdr.TransactionResultCode.txSUCCESS
    assert landed.events is not None and landed.events.contract_events_xdr is not None
    (event_xdr,) = landed.events.contract_events_xdr[0]
    assert stellar_xdr.ContractEvent.from_xdr(event_xdr).body.v0.topics[0] == scval.to_symbol("escrow_funded")
    failed_tx = _tx("escrow_funded", LATEST - 10, successful=False, investor=INVESTOR, amount=1)
    state = LedgerState(latest_ledger=LATEST, escrows=(), transactions=(failed_tx,))
    with Emulator(state) as other:
        failed = SorobanServer(other.url).get_transaction(failed_tx.tx_hash)
        assert failed.status == GetTransactionStatus.FAILED
        assert stellar_xdr.TransactionResult.from_xdr(failed.result_xdr).result.code == (
            stellar_xdr.TransactionResultCode.txFAILED
        )
        # A failed call emits nothing: getEvents has nothing of it.
        assert SorobanServer(other.url).get_events(LATEST - 100, filters=reader.event_filters()).events == []
    missing = server.get_transaction("ab" * 32)
    assert missing.status == GetTransactionStatus.NOT_FOUND
    assert missing.oldest_ledger == LATEST - 120_960 + 1


def test_the_same_call_has_the_same_hash_every_time() -> None:
    first = _tx("escrow_funded", 900_000, investor=INVESTOR, amount=1, funded_amount=1, status=0)
    again = _tx("escrow_funded", 900_000, investor=INVESTOR, amount=1, funded_amount=1, status=0)
    assert first.tx_hash == again.tx_hash and len(first.tx_hash) == 64


def _funded_every(
    step: int, count: int, start: int, contract: str = ESCROW
) -> tuple[activity.ChainTransaction, ...]:
    return tuple(
        _tx(
            "escrow_funded",
            start + n * step,
            contract,
            investor=INVESTOR,
            amount=n,
            funded_amount=n,
            status=0,
        )
        for n in range(count)
    )


def test_pages_follow_the_cursor_until_every_event_is_read() -> None:
    transactions = _funded_every(10, 25, LATEST - 1_000)
    with Emulator(LedgerState(latest_ledger=LATEST, escrows=(), transactions=transactions)) as emulator:
        server = SorobanServer(emulator.url)
        filters = reader.event_filters()
        seen: list[int] = []
        page = server.get_events(LATEST - 1_000, filters=filters, limit=10)
        pages = 1
        while page.events:
            seen.extend(e.ledger for e in page.events)
            page = server.get_events(filters=filters, cursor=page.cursor, limit=10)
            pages += 1
        assert seen == [t.ledger for t in transactions]  # each once, in order
        assert pages == 4


def test_one_request_scans_at_most_10000_ledgers_and_the_reader_goes_on() -> None:
    # 35,000 ledgers of events, one every 1,000: a single request sees only the first 10,000.
    transactions = _funded_every(1_000, 35, LATEST - 35_000 + 1)
    state = LedgerState(latest_ledger=LATEST, escrows=(), transactions=transactions)
    with Emulator(state) as emulator:
        first = SorobanServer(emulator.url).get_events(
            LATEST - 35_000 + 1, filters=reader.event_filters(), limit=10_000
        )
        assert len(first.events) == 10
        assert (
            int(first.cursor.split("-")[0]) >> 32 == LATEST - 35_000 + 1 + 10_000
        )  # the next ledger to scan
        read = reader.read_activity(
            make_settings(rpc_url=emulator.url),
            contract_ids=[ESCROW],
            start_ledger=LATEST - 35_000 + 1,
            tx_hashes=[],
        )
    assert read.scan.unavailable is None
    assert [e.amounts["amount"] for e in read.scan.events] == list(range(35))
    assert read.scan.requests == 4


def test_events_are_matched_to_escrows_by_contract_id() -> None:
    transactions = _funded_every(5, 4, LATEST - 100) + _funded_every(5, 3, LATEST - 99, OTHER)
    with Emulator(LedgerState(latest_ledger=LATEST, escrows=(), transactions=transactions)) as emulator:
        read = reader.read_activity(
            make_settings(rpc_url=emulator.url), contract_ids=[OTHER], start_ledger=LATEST - 200, tx_hashes=[]
        )
        by_id = SorobanServer(emulator.url).get_events(
            LATEST - 200, filters=[EventFilter(event_type=EventFilterType.CONTRACT, contract_ids=[ESCROW])]
        )
    assert {e.contract_id for e in read.scan.events} == {OTHER} and len(read.scan.events) == 3
    assert len(by_id.events) == 4


def test_retention_edges() -> None:
    oldest = LATEST - 120_960 + 1
    transactions = (
        _tx("escrow_funded", oldest - 1, investor=INVESTOR, amount=1, funded_amount=1, status=0),
        _tx("escrow_funded", oldest, investor=INVESTOR, amount=2, funded_amount=3, status=0),
    )
    with Emulator(LedgerState(latest_ledger=LATEST, escrows=(), transactions=transactions)) as emulator:
        server = SorobanServer(emulator.url)
        at_oldest = server.get_events(oldest, filters=reader.event_filters())
        assert [e.ledger for e in at_oldest.events] == [oldest]
        with pytest.raises(SorobanRpcErrorResponse, match="startLedger must be between"):
            server.get_events(oldest - 1, filters=reader.event_filters())
        with pytest.raises(SorobanRpcErrorResponse, match="startLedger must be between"):
            server.get_events(LATEST + 1, filters=reader.event_filters())
        assert server.get_transaction(transactions[0].tx_hash).status == GetTransactionStatus.NOT_FOUND
        assert server.get_transaction(transactions[1].tx_hash).status == GetTransactionStatus.SUCCESS
        # The reader moves a start before the window up to it, and says where the window began.
        read = reader.read_activity(
            make_settings(rpc_url=emulator.url), contract_ids=[ESCROW], start_ledger=10, tx_hashes=[]
        )
    assert read.scan.start_ledger == oldest and read.scan.oldest_ledger == oldest
    assert [e.amounts["amount"] for e in read.scan.events] == [2]


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        ([{"type": "contract"}] * 6, "maximum 5 filters"),
        ([{"contractIds": [ESCROW] * 6}], "maximum 5 contract IDs"),
        ([{"topics": [["*"]] * 6}], "maximum 5 topics"),
        ([{"topics": [["*", "*", "*", "*", "*"]]}], "between 1 and 4 segments"),
        ([{"topics": [["**", "*"]]}], "only allowed as the last"),
        ([{"topics": [["not base64 at all"]]}], "not a base64 ScVal"),
        ([{"contractIds": ["GABC"]}], "is invalid"),
    ],
)
def test_get_events_refuses_filters_beyond_the_limits(filters: list[dict[str, object]], message: str) -> None:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "getEvents",
        "params": {"startLedger": LATEST - 5, "filters": filters},
    }
    with Emulator(LedgerState(latest_ledger=LATEST, escrows=())) as emulator:
        request = urllib.request.Request(
            emulator.url, json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.loads(response.read())
    assert answer["error"]["code"] == -32602
    assert message in answer["error"]["message"]


def test_topic_segments_match_one_any_or_any_rest() -> None:
    name = scval.to_symbol("escrow_funded").to_xdr()
    label = scval.to_symbol("funded").to_xdr()
    invoice = scval.to_symbol("INV_1").to_xdr()
    transactions = _funded_every(1, 1, LATEST - 5)
    with Emulator(LedgerState(latest_ledger=LATEST, escrows=(), transactions=transactions)) as emulator:
        server = SorobanServer(emulator.url)

        def count(*patterns: list[str]) -> int:
            filters = [EventFilter(event_type=EventFilterType.CONTRACT, topics=list(patterns))]
            return len(server.get_events(LATEST - 10, filters=filters).events)

        assert count([name, "**"]) == 1
        assert count([name, label, invoice, "*"]) == 1  # four topics exactly
        assert count([name, label, invoice]) == 0  # three segments: the event has four topics
        assert count([name, "*", scval.to_symbol("INV_2").to_xdr(), "*"]) == 0
        assert count(["*", label, "**"]) == 1


def test_a_missing_method_or_a_fault_after_retries_is_unavailable_never_raised() -> None:
    transactions = _funded_every(1, 2, LATEST - 5)
    state = LedgerState(latest_ledger=LATEST, escrows=(), transactions=transactions)
    with Emulator(state, FaultPlan(unsupported=("getEvents", "getTransaction"))) as emulator:
        read = reader.read_activity(
            make_settings(rpc_url=emulator.url),
            contract_ids=[ESCROW],
            start_ledger=None,
            tx_hashes=[transactions[0].tx_hash],
        )
    assert read.scan.unavailable is not None and "method not found" in read.scan.unavailable
    assert read.transactions[transactions[0].tx_hash].status == "unavailable"
    assert "method not found" in (read.transactions[transactions[0].tx_hash].unavailable or "")
    plan = FaultPlan(rate=1.0, kinds=("http_503",), methods=("getEvents", "getTransaction"))
    with Emulator(state, plan) as emulator:
        read = reader.read_activity(
            make_settings({"RECONCILE_RPC_MAX_RETRIES": "1"}, rpc_url=emulator.url),
            contract_ids=[ESCROW],
            start_ledger=None,
            tx_hashes=[transactions[0].tx_hash],
        )
    assert read.scan.unavailable is not None and "http_503" in read.scan.unavailable
    assert read.transactions[transactions[0].tx_hash].status == "unavailable"


def test_transient_faults_are_retried_to_the_same_answer() -> None:
    transactions = _funded_every(1_000, 12, LATEST - 12_000)
    state = LedgerState(latest_ledger=LATEST, escrows=(), transactions=transactions)
    plan = FaultPlan(
        rate=0.5,
        kinds=("http_503", "rpc_32603", "http_429"),
        methods=("getEvents", "getTransaction"),
        seed=3,
        retry_after_seconds=0.01,
    )
    with Emulator(state, plan) as emulator:
        read = reader.read_activity(
            make_settings({"RECONCILE_RPC_MAX_RETRIES": "8"}, rpc_url=emulator.url),
            contract_ids=[ESCROW],
            start_ledger=LATEST - 12_000,
            tx_hashes=[t.tx_hash for t in transactions],
            policy=reader.RetryPolicy(initial_backoff=0.001, max_backoff=0.01, jitter=0),
        )
        assert emulator.stats.faults_total > 0
    assert read.scan.unavailable is None
    assert [e.amounts["amount"] for e in read.scan.events] == list(range(12))
    assert {lookup.status for lookup in read.transactions.values()} == {"SUCCESS"}


def test_an_undecodable_event_is_counted_and_left_out_never_a_crash() -> None:
    good = _funded_every(1, 1, LATEST - 5)[0]
    topic, _ = activity.escrow_event_xdr("escrow_funded", invoice_id="INV_1", investor=INVESTOR, amount=1)
    broken = activity.ChainEvent(
        LATEST - 3, 1, 0, 0, ESCROW, "ee" * 32, topic, "AAAAAQ=="
    )  # a bool, not a map
    garbage = activity.ChainEvent(LATEST - 2, 1, 0, 0, ESCROW, "ef" * 32, topic, "////")
    carrier = activity.ChainTransaction("ff" * 32, LATEST - 3, 1, True, "", (broken, garbage))
    with Emulator(LedgerState(latest_ledger=LATEST, escrows=(), transactions=(good, carrier))) as emulator:
        read = reader.read_activity(
            make_settings(rpc_url=emulator.url), contract_ids=[ESCROW], start_ledger=LATEST - 10, tx_hashes=[]
        )
    assert read.scan.unavailable is None and read.scan.undecodable == 2
    assert [e.tx_hash for e in read.scan.events] == [good.tx_hash]
