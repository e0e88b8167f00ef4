"""Every fault kind of the emulator is observable over real HTTP, deterministic with its seed."""

from __future__ import annotations

import base64
import json
import random
import time
from collections import Counter
from collections.abc import Iterator

import pytest
import requests
from stellar_sdk import Account, Keypair, Network, SorobanServer, TransactionBuilder
from stellar_sdk import xdr as stellar_xdr
from stellar_sdk.exceptions import SorobanRpcErrorResponse

from reconcile_audit.emulator import (
    FAULT_KINDS,
    Emulator,
    FaultPlan,
    instance_key,
    random_contract_id,
    synthetic_state,
)
from reconcile_audit.emulator.encode import escrow_entry_xdr
from reconcile_audit.emulator.faults import RATE_LIMIT_ERROR, REQUEST_FAULTS, retry_after_header
from reconcile_audit.emulator.state import escrow_struct

STATE = synthetic_state(600, seed=42)
KEYS = [instance_key(spec.contract_id).to_xdr() for spec in STATE.escrows]
BATCHES = [KEYS[i : i + 50] for i in range(0, len(KEYS), 50)]
POISON = STATE.escrows[7].contract_id
ORIGINAL = {key: escrow_entry_xdr(spec) for key, spec in zip(KEYS, STATE.escrows, strict=True)}


def _post(url: str, keys: list[str], request_id: int = 1) -> requests.Response:
    body = {"jsonrpc": "2.0", "id": request_id, "method": "getLedgerEntries", "params": {"keys": keys}}
    return requests.post(url, json=body, timeout=10)


def _outcome(url: str, keys: list[str]) -> str:
    """A short, comparable description of what one request got back."""
    try:
        response = _post(url, keys)
    except requests.ConnectionError:
        return "dropped"
    try:
        body = response.json()
    except ValueError:
        return f"{response.status_code}:not-json"
    if "error" in body:
        return f"{response.status_code}:rpc{body['error']['code']}"
    entries = body["result"]["entries"]
    asked = set(keys)
    bad = sum(1 for e in entries if not _decodes(e["xdr"]))
    extra = sum(1 for e in entries if e["key"] not in asked)
    return f"{response.status_code}:entries={len(entries)},bad={bad},extra={extra}"


def _decodes(data: str) -> bool:
    try:
        stellar_xdr.LedgerEntryData.from_xdr(data)
    except Exception:
        return False
    return True


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    with Emulator(STATE) as running:
        yield running


def _only(emulator: Emulator, kind: str, **extra: object) -> None:
    emulator.set_faults(FaultPlan(rate=1.0, kinds=(kind,), **extra))  # type: ignore[arg-type]


def _faults(emulator: Emulator, before: Counter[str]) -> Counter[str]:
    return Counter(emulator.stats.faults) - before


def test_http_429_has_retry_after_and_a_json_rpc_body(emulator: Emulator) -> None:
    _only(emulator, "http_429", retry_after_seconds=0.05)
    before = Counter(emulator.stats.faults)
    response = _post(emulator.url, BATCHES[0])
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "0.05"
    assert response.json()["error"]["code"] == RATE_LIMIT_ERROR[0]
    assert _faults(emulator, before) == {"http_429": 1}


def test_http_429_text_is_not_json_rpc(emulator: Emulator) -> None:
    _only(emulator, "http_429_text", retry_after_seconds=2)
    response = _post(emulator.url, BATCHES[0])
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "2"
    with pytest.raises(ValueError):
        response.json()


@pytest.mark.parametrize(("kind", "status"), [("http_503", 503), ("http_504", 504)])
def test_gateway_statuses(emulator: Emulator, kind: str, status: int) -> None:
    _only(emulator, kind)
    assert _post(emulator.url, BATCHES[0]).status_code == status


@pytest.mark.parametrize("kind", ["rpc_32001", "rpc_32003", "rpc_32603", "rpc_32602"])
def test_json_rpc_errors(emulator: Emulator, kind: str) -> None:
    _only(emulator, kind)
    response = _post(emulator.url, BATCHES[0], request_id=9)
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == 9
    assert body["error"]["code"] == -int(kind.removeprefix("rpc_"))


def test_json_rpc_errors_reach_the_sdk_client(emulator: Emulator) -> None:
    _only(emulator, "rpc_32003")
    with SorobanServer(emulator.url) as client, pytest.raises(SorobanRpcErrorResponse) as error:
        client.get_ledger_entries([instance_key(STATE.escrows[0].contract_id)])
    assert error.value.code == -32003


def test_delay_answers_normally_after_the_delay(emulator: Emulator) -> None:
    _only(emulator, "delay", delay_seconds=0.15)
    before = Counter(emulator.stats.faults)
    started = time.monotonic()
    outcome = _outcome(emulator.url, BATCHES[0])
    assert time.monotonic() - started >= 0.15
    assert outcome == "200:entries=50,bad=0,extra=0"
    assert _faults(emulator, before) == {"delay": 1}


def test_drop_connection_closes_without_a_response(emulator: Emulator) -> None:
    _only(emulator, "drop_connection")
    with pytest.raises(requests.ConnectionError):
        _post(emulator.url, BATCHES[0])
    # the server is still there for the next connection
    emulator.set_faults(FaultPlan())
    assert _outcome(emulator.url, BATCHES[0]) == "200:entries=50,bad=0,extra=0"


def test_non_json_is_a_200_html_page(emulator: Emulator) -> None:
    _only(emulator, "non_json")
    response = _post(emulator.url, BATCHES[0])
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    with pytest.raises(ValueError):
        json.loads(response.text)


def test_corrupt_xdr_spoils_exactly_one_entry(emulator: Emulator) -> None:
    _only(emulator, "corrupt_xdr")
    outcomes = {_outcome(emulator.url, batch) for batch in BATCHES}
    assert outcomes == {"200:entries=50,bad=1,extra=0"}


def test_corrupt_xdr_uses_every_variant(emulator: Emulator) -> None:
    _only(emulator, "corrupt_xdr")
    variants = set()
    for batch in BATCHES:
        for entry in _post(emulator.url, batch).json()["result"]["entries"]:
            if _decodes(entry["xdr"]):
                continue
            try:
                raw = base64.b64decode(entry["xdr"], validate=True)
            except ValueError:
                variants.add("not_base64")
                continue
            original = ORIGINAL[entry["key"]]
            variants.add("truncated" if len(raw) < len(original) and original.startswith(raw) else "garbage")
    assert variants == {"not_base64", "truncated", "garbage"}


def test_unrequested_entry_adds_a_key_nobody_asked_for(emulator: Emulator) -> None:
    _only(emulator, "unrequested_entry")
    assert _outcome(emulator.url, BATCHES[0]) == "200:entries=51,bad=0,extra=1"


def test_unrequested_entry_when_every_key_was_asked_for() -> None:
    small = synthetic_state(3, seed=1)
    keys = [instance_key(s.contract_id).to_xdr() for s in small.escrows]
    with Emulator(small, FaultPlan(rate=1.0, kinds=("unrequested_entry",))) as emulator:
        assert _outcome(emulator.url, keys) == "200:entries=4,bad=0,extra=1"


def test_conflicting_entry_repeats_a_key_with_another_entry() -> None:
    small = synthetic_state(3, seed=1)
    keys = [instance_key(s.contract_id).to_xdr() for s in small.escrows]
    with Emulator(small, FaultPlan(rate=1.0, kinds=("conflicting_entry",))) as emulator:
        assert _outcome(emulator.url, keys) == "200:entries=4,bad=0,extra=0"
        entries = _post(emulator.url, keys).json()["result"]["entries"]
        assert emulator.stats.faults["conflicting_entry"] == 2
    by_key: dict[str, set[str]] = {}
    for entry in entries:
        by_key.setdefault(entry["key"], set()).add(entry["xdr"])
    assert sorted(len(xdrs) for xdrs in by_key.values()) == [1, 1, 2]


def test_every_kind_is_covered_by_a_test_above() -> None:
    assert set(FAULT_KINDS) == {
        "http_429",
        "http_429_text",
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
    }


# --- rates, mixing and determinism ----------------------------------------------------------


def _sweep(url: str, batches: list[list[str]]) -> list[str]:
    return [_outcome(url, batch) for batch in batches]


MIXED = FaultPlan(
    rate=0.5,
    kinds=tuple(k for k in FAULT_KINDS if k != "delay"),
    seed=7,
    retry_after_seconds=0.01,
)


def test_mixed_faults_are_deterministic_with_the_seed() -> None:
    with Emulator(STATE, MIXED) as first:
        outcomes = _sweep(first.url, BATCHES * 2)
        stats = first.stats
    with Emulator(STATE, MIXED) as second:
        assert _sweep(second.url, BATCHES * 2) == outcomes
    other = FaultPlan(rate=MIXED.rate, kinds=MIXED.kinds, seed=8, retry_after_seconds=0.01)
    with Emulator(STATE, other) as third:
        assert _sweep(third.url, BATCHES * 2) != outcomes
    clean = sum(1 for o in outcomes if o == "200:entries=50,bad=0,extra=0")
    assert clean + stats.faults_total == len(outcomes)
    assert 0 < stats.faults_total < len(outcomes)


def test_the_draw_does_not_depend_on_request_order() -> None:
    with Emulator(STATE, MIXED) as forward:
        ahead = dict(zip(range(len(BATCHES)), _sweep(forward.url, BATCHES), strict=True))
    with Emulator(STATE, MIXED) as backward:
        behind = dict(zip(reversed(range(len(BATCHES))), _sweep(backward.url, BATCHES[::-1]), strict=True))
    assert ahead == behind


def test_transient_faults_clear_on_retry() -> None:
    plan = FaultPlan(rate=0.2, kinds=tuple(REQUEST_FAULTS), seed=3, retry_after_seconds=0.01)
    with Emulator(STATE, plan) as emulator:
        served = 0
        for batch in (KEYS[i : i + 10] for i in range(0, len(KEYS), 10)):
            for _ in range(20):
                outcome = _outcome(emulator.url, batch)
                if outcome.startswith("200:entries"):
                    served += int(outcome.split("=")[1].split(",")[0])
                    break
        stats = emulator.stats
    assert served == len(KEYS)
    assert stats.faults_total > 0


def test_rate_zero_never_faults() -> None:
    with Emulator(STATE, FaultPlan(rate=0.0, kinds=FAULT_KINDS)) as emulator:
        assert set(_sweep(emulator.url, BATCHES)) == {"200:entries=50,bad=0,extra=0"}
        assert emulator.stats.faults_total == 0


# --- permanent faults -----------------------------------------------------------------------


def test_poisoned_corrupt_xdr_hits_that_contract_every_time() -> None:
    poisoned_key = instance_key(POISON).to_xdr()
    with Emulator(STATE, FaultPlan(poisoned={POISON: "corrupt_xdr"})) as emulator:
        for _ in range(3):
            entries = _post(emulator.url, BATCHES[0]).json()["result"]["entries"]
            broken = [e["key"] for e in entries if not _decodes(e["xdr"])]
            assert broken == [poisoned_key]
        assert _outcome(emulator.url, BATCHES[1]) == "200:entries=50,bad=0,extra=0"
        assert emulator.stats.faults == {"corrupt_xdr": 3}


def test_poisoned_request_fault_fails_only_batches_with_that_contract() -> None:
    with Emulator(STATE, FaultPlan(poisoned={POISON: "http_503"})) as emulator:
        assert [_post(emulator.url, BATCHES[0]).status_code for _ in range(3)] == [503, 503, 503]
        assert _post(emulator.url, [instance_key(POISON).to_xdr()]).status_code == 503
        assert _post(emulator.url, BATCHES[0][:7]).status_code == 200
        assert _post(emulator.url, BATCHES[1]).status_code == 200


def test_a_poisoned_contract_missing_from_the_state_is_still_poisoned() -> None:
    ghost = random_contract_id(random.Random(99))
    with Emulator(STATE, FaultPlan(poisoned={ghost: "rpc_32603"})) as emulator:
        body = _post(emulator.url, [*BATCHES[0], instance_key(ghost).to_xdr()]).json()
    assert body["error"]["code"] == -32603


def test_poisoned_unrequested_entry_and_random_faults_combine() -> None:
    plan = FaultPlan(rate=1.0, kinds=("corrupt_xdr",), poisoned={POISON: "unrequested_entry"})
    with Emulator(STATE, plan) as emulator:
        assert _outcome(emulator.url, BATCHES[0]) == "200:entries=51,bad=1,extra=1"


# --- other methods --------------------------------------------------------------------------


def _simulate_body(contract_id: str) -> dict[str, object]:
    source = Account(Keypair.from_raw_ed25519_seed(bytes(32)).public_key, 1)
    transaction = (
        TransactionBuilder(source, Network.TESTNET_NETWORK_PASSPHRASE, base_fee=100)
        .append_invoke_contract_function_op(contract_id, "get_escrow", [])
        .set_timeout(30)
        .build()
    )
    return {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "simulateTransaction",
        "params": {"transaction": transaction.to_xdr()},
    }


def test_random_faults_only_hit_the_planned_methods() -> None:
    with Emulator(STATE, FaultPlan(rate=1.0, kinds=("rpc_32603",))) as emulator:
        simulated = requests.post(
            emulator.url, json=_simulate_body(STATE.escrows[0].contract_id), timeout=10
        ).json()
        assert "result" in simulated
        assert (
            "result"
            in requests.post(
                emulator.url, json={"jsonrpc": "2.0", "id": 1, "method": "getHealth"}, timeout=10
            ).json()
        )


def test_simulate_faults_when_planned() -> None:
    plan = FaultPlan(rate=1.0, kinds=("http_503",), methods=("simulateTransaction", "getHealth"))
    with Emulator(STATE, plan) as emulator:
        simulated = requests.post(emulator.url, json=_simulate_body(STATE.escrows[0].contract_id), timeout=10)
        health = requests.post(
            emulator.url, json={"jsonrpc": "2.0", "id": 1, "method": "getHealth"}, timeout=10
        )
        assert (simulated.status_code, health.status_code) == (503, 503)
        assert _post(emulator.url, BATCHES[0]).status_code == 200


def test_poisoned_simulation_is_corrupted() -> None:
    clean_spec = STATE.escrows[0]
    with Emulator(STATE, FaultPlan(poisoned={POISON: "corrupt_xdr"})) as emulator:
        poisoned = requests.post(emulator.url, json=_simulate_body(POISON), timeout=10).json()["result"]
        clean = requests.post(emulator.url, json=_simulate_body(clean_spec.contract_id), timeout=10).json()[
            "result"
        ]
        assert emulator.stats.faults == {"corrupt_xdr": 1}
    poisoned_spec = next(s for s in STATE.escrows if s.contract_id == POISON)
    assert poisoned["results"][0]["xdr"] != escrow_struct(poisoned_spec).to_xdr()
    assert clean["results"][0]["xdr"] == escrow_struct(clean_spec).to_xdr()


def test_delay_on_other_methods(emulator: Emulator) -> None:
    emulator.set_faults(FaultPlan(rate=1.0, kinds=("delay",), delay_seconds=0.05, methods=("getNetwork",)))
    with SorobanServer(emulator.url) as client:
        assert client.get_network().passphrase == STATE.network_passphrase
    assert emulator.stats.faults["delay"] >= 1


# --- the plan itself ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rate": 1.5, "kinds": ("http_503",)},
        {"rate": 0.5},
        {"rate": 0.5, "kinds": ("http_418",)},
        {"poisoned": {POISON: "meteor"}},
        {"delay_seconds": -1},
    ],
)
def test_bad_plans_are_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        FaultPlan(**kwargs)  # type: ignore[arg-type]


def test_a_poisoned_address_must_be_a_strkey() -> None:
    with pytest.raises(ValueError):
        Emulator(STATE, FaultPlan(poisoned={"Cnot-a-strkey": "http_503"}))


def test_the_plan_is_frozen_against_later_changes() -> None:
    poisoned = {POISON: "http_503"}
    plan = FaultPlan(poisoned=poisoned)
    poisoned[POISON] = "corrupt_xdr"
    assert plan.poisoned[POISON] == "http_503"


@pytest.mark.parametrize(("seconds", "header"), [(0.05, "0.05"), (2, "2"), (2.0, "2"), (0, "0")])
def test_retry_after_header(seconds: float, header: str) -> None:
    assert retry_after_header(seconds) == header


def test_a_plan_pickles_for_a_child_process() -> None:
    import pickle

    plan = FaultPlan(rate=0.3, kinds=("http_503",), seed=4, poisoned={POISON: "corrupt_xdr"})
    copy = pickle.loads(pickle.dumps(plan))
    assert copy == plan
    assert copy.poisoned[POISON] == "corrupt_xdr"
    with pytest.raises(TypeError):
        copy.poisoned[POISON] = "http_503"  # type: ignore[index]
    assert pickle.loads(pickle.dumps(STATE)) == STATE
