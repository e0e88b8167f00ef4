"""The RPC methods without HTTP: hostile input becomes a JSON-RPC error or a failed simulation, never a crash."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from stellar_sdk import Account, Keypair, Network, TransactionBuilder

from reconcile_audit.emulator import instance_key, synthetic_state
from reconcile_audit.emulator.rpc import RpcError, RpcNode

STATE = synthetic_state(5, seed=4)
NODE = RpcNode(STATE)
ENVELOPE = (
    TransactionBuilder(
        Account(Keypair.from_raw_ed25519_seed(bytes(32)).public_key, 1),
        Network.TESTNET_NETWORK_PASSPHRASE,
        100,
    )
    .append_invoke_contract_function_op(STATE.escrows[0].contract_id, "get_escrow", [])
    .set_timeout(30)
    .build()
    .to_xdr_object()
    .to_xdr_bytes()
)


@settings(max_examples=400, deadline=None)
@given(raw=st.one_of(st.binary(max_size=120), st.binary(max_size=120).map(lambda b: b"\x00\x00\x00\x06" + b)))
def test_any_key_bytes_are_answered_or_invalid_params(raw: bytes) -> None:
    key = base64.b64encode(raw).decode()
    try:
        keys, found = NODE.lookup({"keys": [key]})
    except RpcError as exc:
        assert exc.code == -32602
        return
    assert keys == [key]
    assert found == []


@settings(max_examples=300, deadline=None)
@given(
    edits=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=len(ENVELOPE) - 1), st.integers(min_value=0, max_value=255)
        ),
        min_size=1,
        max_size=4,
    )
)
def test_a_mangled_envelope_never_crashes_simulation(edits: list[tuple[int, int]]) -> None:
    mangled = bytearray(ENVELOPE)
    for position, value in edits:
        mangled[position] = value
    try:
        outcome = NODE.simulate({"transaction": base64.b64encode(bytes(mangled)).decode()})
    except RpcError as exc:
        assert exc.code == -32602
        return
    assert ("error" in outcome.result) != ("results" in outcome.result)
    assert outcome.result["latestLedger"] == STATE.latest_ledger


def test_the_unmangled_envelope_simulates() -> None:
    outcome = NODE.simulate({"transaction": base64.b64encode(ENVELOPE).decode()})
    assert outcome.contract_id == STATE.escrows[0].contract_id
    assert "results" in outcome.result


@pytest.mark.parametrize("params", [None, {}, {"transaction": 5}, {"transaction": "%%%"}])
def test_simulate_params_are_checked(params: object) -> None:
    with pytest.raises(RpcError) as error:
        NODE.simulate(params)
    assert error.value.code == -32602


def test_instance_keys_index_every_entry() -> None:
    assert set(NODE.entries) == {instance_key(c).to_xdr() for c in (*NODE.escrows, *NODE.tokens)}
    entry = NODE.entries[instance_key(STATE.escrows[0].contract_id).to_xdr()]
    assert f'"xdr":"{entry.xdr}"' in entry.fragment
