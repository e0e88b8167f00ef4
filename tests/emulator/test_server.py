"""The emulator over real loopback HTTP, read with stellar-sdk's own RPC clients and models."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import random
import socket
import threading
from collections.abc import Iterator

import aiohttp
import pytest
import requests
from stellar_sdk import (
    Account,
    Keypair,
    Network,
    SorobanServer,
    SorobanServerAsync,
    TransactionBuilder,
    scval,
)
from stellar_sdk import xdr as stellar_xdr
from stellar_sdk.exceptions import SorobanRpcErrorResponse
from stellar_sdk.soroban_rpc import (
    GetLatestLedgerResponse,
    GetLedgerEntriesResponse,
    SimulateTransactionResponse,
)

from reconcile_audit.emulator import (
    STORAGE_SHAPES,
    Emulator,
    EscrowSpec,
    LedgerState,
    TokenSpec,
    escrow_instance_entry,
    instance_key,
    random_account_id,
    random_contract_id,
    serve_forever,
    synthetic_state,
    token_instance_entry,
)
from reconcile_audit.emulator.state import I128_MAX, I128_MIN, escrow_struct

LATEST = 500_000
RNG = random.Random(2024)
USDC = TokenSpec(contract_id=random_contract_id(RNG), decimals=7)
CENTS = TokenSpec(contract_id=random_contract_id(RNG), decimals=2, name="Cent Token", symbol="CENT")
BARE = TokenSpec(contract_id=random_contract_id(RNG), decimals=None)
ADMIN = random_account_id(RNG)


def _escrow(n: int, **overrides: object) -> EscrowSpec:
    values: dict[str, object] = {
        "contract_id": random_contract_id(RNG),
        "invoice_id": f"INV_{n:04d}",
        "funded_amount": 1_000_000 * n,
        "amount": 2_000_000 * n,
        "funding_target": 2_000_000 * n,
        "funding_token": USDC.contract_id,
        "admin": ADMIN,
        "sme_address": random_account_id(RNG),
    }
    values.update(overrides)
    return EscrowSpec(**values)  # type: ignore[arg-type]


SHAPED = tuple(
    _escrow(i, storage_shape=shape, distributed_principal=(None if i % 2 else 10**12 + i))
    for i, shape in enumerate(STORAGE_SHAPES * 2)
)
EXTREMES = _escrow(
    90, funded_amount=I128_MIN, amount=I128_MAX, funding_target=0, sme_address=CENTS.contract_id
)
ARCHIVED = _escrow(91, live_until_ledger=0)
EXPIRED = _escrow(92, live_until_ledger=LATEST - 10)  # below latest: also archived
NO_ESCROW = _escrow(93, has_escrow=False)
ON_CENTS = _escrow(94, funding_token=CENTS.contract_id)
UNKNOWN_TOKEN = _escrow(95, funding_token=random_contract_id(RNG))
ESCROWS = (*SHAPED, EXTREMES, ARCHIVED, EXPIRED, NO_ESCROW, ON_CENTS, UNKNOWN_TOKEN)
STATE = LedgerState(latest_ledger=LATEST, escrows=ESCROWS, tokens=(USDC, CENTS, BARE))
ABSENT = random_contract_id(RNG)


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    with Emulator(STATE) as running:
        yield running


@pytest.fixture(scope="module")
def server(emulator: Emulator) -> Iterator[SorobanServer]:
    client = SorobanServer(emulator.url)
    yield client
    client.close()


def _key(contract_id: str) -> str:
    return instance_key(contract_id).to_xdr()


def _post(url: str, method: str, params: object = None, request_id: int = 1) -> requests.Response:
    return requests.post(
        url, json={"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}, timeout=10
    )


# --- getLedgerEntries ---------------------------------------------------------------------------


def test_every_storage_shape_round_trips(server: SorobanServer) -> None:
    specs = {spec.contract_id: spec for spec in ESCROWS}
    response = server.get_ledger_entries([instance_key(c) for c in specs])
    assert response.latest_ledger == LATEST
    assert response.entries is not None
    assert len(response.entries) == len(ESCROWS)
    for entry, spec in zip(response.entries, ESCROWS, strict=True):
        assert entry.key == _key(spec.contract_id)
        data = stellar_xdr.LedgerEntryData.from_xdr(entry.xdr)
        assert data == escrow_instance_entry(spec)
        assert entry.last_modified_ledger == spec.last_modified_ledger
        assert entry.live_until_ledger == spec.live_until_ledger
        if spec.has_escrow:
            storage = {
                repr(scval.to_native(e.key)): e.val for e in data.contract_data.val.instance.storage.sc_map
            }
            escrow = scval.from_struct(storage["['Escrow']"])
            assert scval.from_int128(escrow["funded_amount"]) == spec.funded_amount
            assert scval.from_symbol(escrow["invoice_id"]) == spec.invoice_id
    assert {s.storage_shape for s in ESCROWS} == set(STORAGE_SHAPES)


def test_tokens_are_served_with_their_metadata(server: SorobanServer) -> None:
    response = server.get_ledger_entries([instance_key(t.contract_id) for t in (USDC, CENTS, BARE)])
    assert response.entries is not None
    decoded = [stellar_xdr.LedgerEntryData.from_xdr(e.xdr) for e in response.entries]
    assert decoded == [token_instance_entry(t) for t in (USDC, CENTS, BARE)]


def test_missing_keys_are_omitted_and_order_follows_the_request(server: SorobanServer) -> None:
    wanted = [
        ESCROWS[3].contract_id,
        ABSENT,
        ESCROWS[0].contract_id,
        UNKNOWN_TOKEN.funding_token,
        ESCROWS[5].contract_id,
    ]
    response = server.get_ledger_entries([instance_key(c) for c in wanted])
    assert response.entries is not None
    assert [e.key for e in response.entries] == [_key(c) for c in (wanted[0], wanted[2], wanted[4])]


def test_nothing_found_is_an_empty_list(server: SorobanServer) -> None:
    response = server.get_ledger_entries([instance_key(ABSENT)])
    assert response.entries == []


def test_duplicate_keys_are_answered_once(server: SorobanServer) -> None:
    key = instance_key(ESCROWS[0].contract_id)
    response = server.get_ledger_entries([key, key])
    assert response.entries is not None
    assert len(response.entries) == 1


def test_archived_entries_are_returned_with_their_ttl(server: SorobanServer) -> None:
    response = server.get_ledger_entries(
        [instance_key(ARCHIVED.contract_id), instance_key(EXPIRED.contract_id)]
    )
    assert response.entries is not None
    assert [e.live_until_ledger for e in response.entries] == [0, LATEST - 10]


def test_more_than_200_keys_is_invalid_params(emulator: Emulator, server: SorobanServer) -> None:
    rng = random.Random(5)
    keys = [instance_key(random_contract_id(rng)) for _ in range(201)]
    with pytest.raises(SorobanRpcErrorResponse) as error:
        server.get_ledger_entries(keys)
    assert error.value.code == -32602
    assert "201" in (error.value.message or "")
    assert server.get_ledger_entries(keys[:200]).entries == []


@pytest.mark.parametrize("bad", ["not base64!", base64.b64encode(b"\x00\x00\x00\x06short").decode(), ""])
def test_malformed_keys_are_invalid_params(emulator: Emulator, bad: str) -> None:
    body = _post(emulator.url, "getLedgerEntries", {"keys": [_key(ESCROWS[0].contract_id), bad]}).json()
    assert body["error"]["code"] == -32602
    assert "index 1" in body["error"]["message"]


@pytest.mark.parametrize(
    "params", [None, [], {"keys": "abc"}, {"keys": [1]}, {"keys": [], "xdrFormat": "json"}]
)
def test_bad_params_are_invalid_params(emulator: Emulator, params: object) -> None:
    assert _post(emulator.url, "getLedgerEntries", params).json()["error"]["code"] == -32602


def test_xdr_format_base64_is_accepted(emulator: Emulator) -> None:
    body = _post(
        emulator.url, "getLedgerEntries", {"keys": [_key(ESCROWS[0].contract_id)], "xdrFormat": "base64"}
    )
    parsed = GetLedgerEntriesResponse.model_validate(body.json()["result"])
    assert parsed.entries is not None
    assert len(parsed.entries) == 1


def test_bad_json_rpc_is_answered_with_json_rpc_errors(emulator: Emulator) -> None:
    bad_json = requests.post(emulator.url, data=b"{not json", timeout=10).json()
    assert bad_json["error"]["code"] == -32700
    assert _post(emulator.url, "getFeeStatsNope").json()["error"]["code"] == -32601
    batch = requests.post(emulator.url, json=[{"jsonrpc": "2.0", "id": 1, "method": "getHealth"}], timeout=10)
    assert batch.json()["error"]["code"] == -32600


def test_async_client_reads_entries() -> None:
    async def read(url: str) -> GetLedgerEntriesResponse:
        async with SorobanServerAsync(url) as client:
            return await client.get_ledger_entries([instance_key(s.contract_id) for s in ESCROWS[:4]])

    with Emulator(STATE) as emulator:
        response = asyncio.run(read(emulator.url))
    assert response.entries is not None
    assert len(response.entries) == 4


def test_keep_alive_reuses_one_connection() -> None:
    async def many(url: str) -> list[int]:
        payload = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "getLedgerEntries",
            "params": {"keys": [_key(ESCROWS[0].contract_id)]},
        }
        statuses = []
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
            for _ in range(10):
                async with session.post(url, json=payload) as response:
                    await response.read()
                    statuses.append(response.status)
        return statuses

    with Emulator(STATE) as emulator:
        assert asyncio.run(many(emulator.url)) == [200] * 10
        stats = emulator.stats
    assert stats.http_requests == 10
    assert stats.connections == 1
    assert stats.requests["getLedgerEntries"] == 10
    assert stats.keys_requested == 10
    assert stats.entries_served == 10


def test_latest_ledger_can_advance_per_request() -> None:
    with Emulator(STATE, ledger_step_per_request=3) as emulator, SorobanServer(emulator.url) as client:
        seen = [
            client.get_ledger_entries([instance_key(ESCROWS[0].contract_id)]).latest_ledger for _ in range(3)
        ]
        assert seen == [LATEST, LATEST + 3, LATEST + 6]
        assert client.get_latest_ledger().sequence == LATEST + 9
        emulator.advance_ledger(100)
        assert client.get_health().latest_ledger == LATEST + 109


# --- network facts --------------------------------------------------------------------------


def test_network_health_and_latest_ledger_parse_into_sdk_models(server: SorobanServer) -> None:
    network = server.get_network()
    assert network.passphrase == Network.TESTNET_NETWORK_PASSPHRASE
    assert network.protocol_version == 23
    health = server.get_health()
    assert health.status == "healthy"
    assert health.latest_ledger == LATEST
    assert health.oldest_ledger == LATEST - health.ledger_retention_window + 1
    latest = server.get_latest_ledger()
    assert latest.sequence == LATEST
    assert latest.protocol_version == 23
    assert len(latest.id) == 64
    assert stellar_xdr.LedgerHeader.from_xdr(latest.header_xdr).ledger_seq.uint32 == LATEST
    meta = stellar_xdr.LedgerCloseMeta.from_xdr(latest.metadata_xdr)
    assert meta.v0 is not None
    assert meta.v0.ledger_header.hash.hash.hex() == latest.id


def test_another_network_is_reported_as_configured() -> None:
    state = dataclasses.replace(
        STATE, network_passphrase=Network.PUBLIC_NETWORK_PASSPHRASE, protocol_version=24
    )
    with Emulator(state) as emulator, SorobanServer(emulator.url) as client:
        network = client.get_network()
    assert network.passphrase == Network.PUBLIC_NETWORK_PASSPHRASE
    assert network.protocol_version == 24
    assert network.friendbot_url is None


def test_version_info(emulator: Emulator) -> None:
    body = _post(emulator.url, "getVersionInfo").json()
    assert body["result"]["protocolVersion"] == 23


# --- simulateTransaction --------------------------------------------------------------------


def _invoke(
    contract_id: str, function: str, args: list[stellar_xdr.SCVal] | None = None
) -> TransactionBuilder:
    source = Account(Keypair.from_raw_ed25519_seed(bytes(32)).public_key, 1)
    return (
        TransactionBuilder(source, Network.TESTNET_NETWORK_PASSPHRASE, base_fee=100)
        .append_invoke_contract_function_op(contract_id, function, args or [])
        .set_timeout(30)
    )


def test_simulate_get_escrow_returns_the_struct(server: SorobanServer) -> None:
    for spec in (ESCROWS[0], SHAPED[3], EXTREMES):
        response = server.simulate_transaction(_invoke(spec.contract_id, "get_escrow").build())
        assert response.error is None
        assert response.results is not None
        value = stellar_xdr.SCVal.from_xdr(response.results[0].xdr)
        assert value == escrow_struct(spec)
        data = stellar_xdr.SorobanTransactionData.from_xdr(response.transaction_data)
        assert instance_key(spec.contract_id) in data.resources.footprint.read_only
        assert response.min_resource_fee is not None
        assert response.min_resource_fee > 0
        assert response.latest_ledger == LATEST


def test_simulate_token_decimals(server: SorobanServer) -> None:
    for token in (USDC, CENTS):
        response = server.simulate_transaction(_invoke(token.contract_id, "decimals").build())
        assert response.results is not None
        assert scval.from_uint32(response.results[0].xdr) == token.decimals
    name = server.simulate_transaction(_invoke(CENTS.contract_id, "symbol").build())
    assert name.results is not None
    assert scval.from_string(name.results[0].xdr) == b"CENT"


@pytest.mark.parametrize(
    ("contract_id", "function", "fragment"),
    [
        (ABSENT, "get_escrow", "MissingValue"),
        (ARCHIVED.contract_id, "get_escrow", "archived"),
        (EXPIRED.contract_id, "get_escrow", "archived"),
        (NO_ESCROW.contract_id, "get_escrow", "not initialized"),
        (ESCROWS[0].contract_id, "withdraw_everything", "non-existent contract function"),
        (BARE.contract_id, "decimals", "METADATA"),
        (USDC.contract_id, "get_escrow", "non-existent contract function"),
    ],
)
def test_failed_simulations_are_http_200_with_error(
    emulator: Emulator, contract_id: str, function: str, fragment: str
) -> None:
    transaction = _invoke(contract_id, function).build().to_xdr()
    raw = _post(emulator.url, "simulateTransaction", {"transaction": transaction})
    assert raw.status_code == 200
    response = SimulateTransactionResponse.model_validate(raw.json()["result"])
    assert response.error is not None
    assert fragment in response.error
    assert response.results is None


def test_simulate_with_arguments_fails(server: SorobanServer) -> None:
    response = server.simulate_transaction(
        _invoke(ESCROWS[0].contract_id, "get_escrow", [scval.to_uint32(1)]).build()
    )
    assert response.error is not None


def test_simulate_rejects_a_transaction_that_does_not_decode(emulator: Emulator) -> None:
    body = _post(emulator.url, "simulateTransaction", {"transaction": "AAAA"}).json()
    assert body["error"]["code"] == -32602


def test_simulate_of_a_non_invocation_is_an_error(server: SorobanServer) -> None:
    source = Account(Keypair.from_raw_ed25519_seed(bytes(32)).public_key, 1)
    payment = (
        TransactionBuilder(source, Network.TESTNET_NETWORK_PASSPHRASE, base_fee=100)
        .append_bump_sequence_op(5)
        .set_timeout(30)
        .build()
    )
    response = server.simulate_transaction(payment)
    assert response.error is not None


# --- lifecycle ------------------------------------------------------------------------------


def test_a_port_in_use_fails_start() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError):
            Emulator(STATE, port=port).start()


def test_start_twice_fails_and_stop_is_idempotent() -> None:
    emulator = Emulator(STATE).start()
    try:
        with pytest.raises(RuntimeError):
            emulator.start()
    finally:
        emulator.stop()
    emulator.stop()
    with pytest.raises(requests.ConnectionError):
        _post(emulator.url, "getHealth")


def test_serve_forever_serves_until_stopped() -> None:
    stop = threading.Event()
    urls: list[str] = []
    ready = threading.Event()

    def on_ready(url: str) -> None:
        urls.append(url)
        ready.set()

    thread = threading.Thread(
        target=serve_forever, args=(STATE, None, "127.0.0.1", 0), kwargs={"stop": stop, "on_ready": on_ready}
    )
    thread.start()
    try:
        assert ready.wait(30)
        assert _post(urls[0], "getHealth").json()["result"]["status"] == "healthy"
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()


def test_synthetic_state_serves_in_full() -> None:
    state = synthetic_state(1_000, seed=3)
    with Emulator(state) as emulator, SorobanServer(emulator.url) as client:
        keys = [instance_key(s.contract_id) for s in state.escrows]
        served = 0
        for start in range(0, len(keys), 200):
            entries = client.get_ledger_entries(keys[start : start + 200]).entries
            served += len(entries or [])
        sample = client.get_ledger_entries([keys[-1]]).entries
        stats = emulator.stats
    assert served == 1_000
    assert sample is not None
    assert stellar_xdr.LedgerEntryData.from_xdr(sample[0].xdr) == escrow_instance_entry(state.escrows[-1])
    assert stats.build_seconds > 0


def test_response_body_is_plain_json(emulator: Emulator) -> None:
    raw = _post(emulator.url, "getLedgerEntries", {"keys": [_key(ESCROWS[0].contract_id)]}, request_id=77)
    assert raw.headers["Content-Type"].startswith("application/json")
    body = json.loads(raw.text)
    assert body["jsonrpc"] == "2.0"
    assert body["id"] == 77
    assert set(body["result"]["entries"][0]) == {"key", "xdr", "lastModifiedLedgerSeq", "liveUntilLedgerSeq"}
    GetLatestLedgerResponse.model_validate(_post(emulator.url, "getLatestLedger").json()["result"])


def test_balance_entries_are_served_for_stellar_asset_contracts_only() -> None:
    from reconcile_audit.emulator.state import balance_entry, balance_key

    wasm_token = dataclasses.replace(USDC, contract_id=random_contract_id(RNG), stellar_asset=False)
    held = _escrow(200, token_balance=7_000_000, balance_last_modified_ledger=LATEST - 3, custodial=True)
    empty = _escrow(201)  # no Balance entry: the holder has never received the token
    on_wasm = _escrow(202, funding_token=wasm_token.contract_id, token_balance=5)
    state = LedgerState(latest_ledger=LATEST, escrows=(held, empty, on_wasm), tokens=(USDC, wasm_token))
    with Emulator(state) as running:
        client = SorobanServer(running.url)
        keys = [balance_key(e.funding_token, e.contract_id) for e in (held, empty, on_wasm)]
        response = client.get_ledger_entries(keys)
        client.close()
    assert response.entries is not None and len(response.entries) == 1
    (entry,) = response.entries
    assert entry.key == keys[0].to_xdr()
    assert stellar_xdr.LedgerEntryData.from_xdr(entry.xdr) == balance_entry(
        USDC.contract_id, held.contract_id, 7_000_000
    )
    assert entry.last_modified_ledger == LATEST - 3


def test_a_mutation_changes_an_escrow_between_two_reads() -> None:
    from reconcile_audit.emulator import Mutation

    before = _escrow(300, funded_amount=1_000)
    after = dataclasses.replace(before, funded_amount=2_000)
    state = LedgerState(
        latest_ledger=LATEST, escrows=(before,), tokens=(USDC,), mutations=(Mutation(1, after),)
    )
    with Emulator(state, ledger_step_per_request=1) as running:
        client = SorobanServer(running.url)
        first = client.get_ledger_entries([instance_key(before.contract_id)])
        second = client.get_ledger_entries([instance_key(before.contract_id)])
        client.close()
    assert first.entries and second.entries
    assert stellar_xdr.LedgerEntryData.from_xdr(first.entries[0].xdr) == escrow_instance_entry(before)
    changed = dataclasses.replace(after, last_modified_ledger=second.entries[0].last_modified_ledger)
    assert stellar_xdr.LedgerEntryData.from_xdr(second.entries[0].xdr) == escrow_instance_entry(changed)
    assert second.entries[0].last_modified_ledger == LATEST + 1  # the ledger it changed at
