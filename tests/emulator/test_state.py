"""The emulator's ledger state: stellar-sdk builds the XDR, the fast encoder matches it byte for byte."""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from stellar_sdk import Address, StrKey, scval
from stellar_sdk import xdr as stellar_xdr

from reconcile_audit.emulator import encode
from reconcile_audit.emulator.state import (
    I128_MAX,
    I128_MIN,
    STORAGE_SHAPES,
    EscrowSpec,
    LedgerState,
    TokenSpec,
    balance_entry,
    balance_key,
    escrow_instance_entry,
    instance_key,
    random_account_id,
    random_contract_id,
    synthetic_state,
    token_instance_entry,
)

RNG = random.Random(7)
TOKEN = random_contract_id(RNG)


def _escrow(**overrides: object) -> EscrowSpec:
    rng = random.Random(11)
    values: dict[str, object] = {
        "contract_id": random_contract_id(rng),
        "invoice_id": "INV_0001",
        "funded_amount": 1_234_500_000,
        "amount": 5_000_000_000,
        "funding_target": 5_000_000_000,
        "funding_token": TOKEN,
        "admin": random_account_id(rng),
        "sme_address": random_account_id(rng),
    }
    values.update(overrides)
    return EscrowSpec(**values)  # type: ignore[arg-type]


def _storage(data: stellar_xdr.LedgerEntryData) -> dict[str, stellar_xdr.SCVal]:
    """Instance storage keyed by a readable rendering of each key (Vec[Symbol] -> its symbols)."""
    instance = data.contract_data.val.instance
    assert instance.storage is not None
    out = {}
    for entry in instance.storage.sc_map:
        native = scval.to_native(entry.key)
        out[repr(native)] = entry.val
    return out


@pytest.mark.parametrize("shape", STORAGE_SHAPES)
@pytest.mark.parametrize("distributed", [None, 0, 987_654_321])
def test_escrow_entry_decodes_back_to_the_spec(shape: str, distributed: int | None) -> None:
    spec = _escrow(
        storage_shape=shape, distributed_principal=distributed, funded_amount=I128_MIN, amount=I128_MAX
    )
    data = stellar_xdr.LedgerEntryData.from_xdr(escrow_instance_entry(spec).to_xdr())
    assert data.type == stellar_xdr.LedgerEntryType.CONTRACT_DATA
    assert Address.from_xdr_sc_address(data.contract_data.contract).address == spec.contract_id
    assert data.contract_data.durability == stellar_xdr.ContractDataDurability.PERSISTENT
    storage = _storage(data)
    escrow = scval.from_struct(storage["['Escrow']"])
    assert scval.from_int128(escrow["funded_amount"]) == I128_MIN
    assert scval.from_int128(escrow["amount"]) == I128_MAX
    assert scval.from_int128(escrow["funding_target"]) == spec.funding_target
    assert scval.from_symbol(escrow["invoice_id"]) == spec.invoice_id
    assert scval.from_uint32(escrow["status"]) == spec.status
    assert scval.from_uint64(escrow["maturity"]) == spec.maturity
    assert scval.from_int64(escrow["yield_bps"]) == spec.yield_bps
    assert scval.from_address(escrow["admin"]).address == spec.admin
    assert scval.from_address(escrow["sme_address"]).address == spec.sme_address
    names = list(escrow)
    assert names == sorted(names)
    assert ("legal_hold" in names) == (shape == "escrow_extra_fields")
    if shape == "no_funding_token":
        assert "['FundingToken']" not in storage
    else:
        assert scval.from_address(storage["['FundingToken']"]).address == TOKEN
    if distributed is None:
        assert "['DistributedPrincipal']" not in storage
    else:
        assert scval.from_int128(storage["['DistributedPrincipal']"]) == distributed
    assert ("['Admin']" in storage) == (shape != "minimal")
    if shape == "extra_keys":
        assert len(storage) > 15
        # look-alike keys sit on both sides of the real Escrow key
        keys = list(storage)
        assert keys.index("'Escrow'") < keys.index("['Escrow']") < keys.index("['EscrowV2']")


def test_escrow_without_escrow_key() -> None:
    storage = _storage(escrow_instance_entry(_escrow(has_escrow=False)))
    assert "['Escrow']" not in storage
    assert "['FundingToken']" in storage


def test_instance_key_is_the_persistent_instance_key() -> None:
    spec = _escrow()
    key = stellar_xdr.LedgerKey.from_xdr(instance_key(spec.contract_id).to_xdr())
    assert key.contract_data.key.type == stellar_xdr.SCValType.SCV_LEDGER_KEY_CONTRACT_INSTANCE
    assert key.contract_data.durability == stellar_xdr.ContractDataDurability.PERSISTENT
    assert Address.from_xdr_sc_address(key.contract_data.contract).address == spec.contract_id


@pytest.mark.parametrize("decimals", [7, 2, 0, None])
def test_token_instance_has_sac_metadata(decimals: int | None) -> None:
    token = TokenSpec(contract_id=TOKEN, decimals=decimals, name="Euro Coin", symbol="EURC")
    data = token_instance_entry(token)
    instance = data.contract_data.val.instance
    assert instance.executable.type == stellar_xdr.ContractExecutableType.CONTRACT_EXECUTABLE_STELLAR_ASSET
    storage = _storage(data)
    if decimals is None:
        assert "'METADATA'" not in storage
        return
    metadata = scval.from_struct(storage["'METADATA'"])
    assert scval.from_uint32(metadata["decimal"]) == decimals
    assert scval.from_string(metadata["name"]) == b"Euro Coin"
    assert scval.from_string(metadata["symbol"]) == b"EURC"


def test_random_ids_are_valid_and_seeded() -> None:
    a, b = random.Random(3), random.Random(3)
    ids = [random_contract_id(a) for _ in range(5)]
    assert ids == [random_contract_id(b) for _ in range(5)]
    assert all(StrKey.is_valid_contract(i) for i in ids)
    assert StrKey.is_valid_ed25519_public_key(random_account_id(a))


def test_specs_reject_what_the_chain_cannot_hold() -> None:
    with pytest.raises(ValueError, match="storage_shape"):
        _escrow(storage_shape="weird")
    with pytest.raises(ValueError, match="symbol"):
        _escrow(invoice_id="INV-1")
    with pytest.raises(ValueError, match="i128"):
        _escrow(funded_amount=I128_MAX + 1)
    spec = _escrow()
    with pytest.raises(ValueError, match="twice"):
        LedgerState(latest_ledger=10, escrows=(spec, spec))


def test_synthetic_state_is_seeded() -> None:
    assert synthetic_state(20, seed=5) == synthetic_state(20, seed=5)
    assert synthetic_state(20, seed=5) != synthetic_state(20, seed=6)
    state = synthetic_state(20, seed=5)
    assert len({e.contract_id for e in state.escrows}) == 20
    assert all(e.funded_amount % 10**5 == 0 for e in state.escrows)  # whole cents at 7 decimals


# --- the fast encoder against stellar-sdk as oracle -------------------------------------------


@pytest.mark.parametrize("shape", STORAGE_SHAPES)
@pytest.mark.parametrize("has_escrow", [True, False])
@pytest.mark.parametrize("distributed", [None, -1])
@pytest.mark.parametrize("custodial", [False, True])
def test_fast_entry_equals_sdk_for_every_shape(
    shape: str, has_escrow: bool, distributed: int | None, custodial: bool
) -> None:
    spec = _escrow(
        storage_shape=shape, has_escrow=has_escrow, distributed_principal=distributed, custodial=custodial
    )
    assert encode.escrow_entry_xdr(spec) == escrow_instance_entry(spec).to_xdr_bytes()


addresses = st.one_of(
    st.binary(min_size=32, max_size=32).map(StrKey.encode_contract),
    st.binary(min_size=32, max_size=32).map(StrKey.encode_ed25519_public_key),
)
i128 = st.integers(min_value=I128_MIN, max_value=I128_MAX)


@settings(max_examples=150, deadline=None)
@given(
    contract=st.binary(min_size=32, max_size=32).map(StrKey.encode_contract),
    invoice_id=st.from_regex(r"[A-Za-z0-9_]{1,32}", fullmatch=True),
    funded=i128,
    amount=i128,
    target=i128,
    distributed=st.one_of(st.none(), i128),
    status=st.integers(min_value=0, max_value=2**32 - 1),
    maturity=st.integers(min_value=0, max_value=2**64 - 1),
    yield_bps=st.integers(min_value=-(2**63), max_value=2**63 - 1),
    admin=addresses,
    sme=addresses,
    token=addresses,
    shape=st.sampled_from(STORAGE_SHAPES),
    has_escrow=st.booleans(),
    custodial=st.booleans(),
    balance=i128,
)
def test_fast_entry_equals_sdk_for_any_values(
    contract: str,
    invoice_id: str,
    funded: int,
    amount: int,
    target: int,
    distributed: int | None,
    status: int,
    maturity: int,
    yield_bps: int,
    admin: str,
    sme: str,
    token: str,
    shape: str,
    has_escrow: bool,
    custodial: bool,
    balance: int,
) -> None:
    spec = EscrowSpec(
        contract_id=contract,
        invoice_id=invoice_id,
        funded_amount=funded,
        amount=amount,
        funding_target=target,
        funding_token=token,
        admin=admin,
        sme_address=sme,
        status=status,
        maturity=maturity,
        yield_bps=yield_bps,
        distributed_principal=distributed,
        has_escrow=has_escrow,
        storage_shape=shape,
        custodial=custodial,
    )
    assert encode.escrow_entry_xdr(spec) == escrow_instance_entry(spec).to_xdr_bytes()
    assert encode.instance_key_xdr(contract) == instance_key(contract).to_xdr_bytes()
    if token.startswith("C"):  # a token is a contract; the holder (the escrow) is one too
        assert encode.balance_key_xdr(token, contract) == balance_key(token, contract).to_xdr_bytes()
        assert (
            encode.balance_entry_xdr(token, contract, balance)
            == balance_entry(token, contract, balance).to_xdr_bytes()
        )


def test_fast_address_rejects_a_bad_checksum() -> None:
    good = _escrow().contract_id
    bad = good[:-1] + ("A" if good[-1] != "A" else "B")
    with pytest.raises(ValueError):
        encode.sc_address_xdr(bad)
    with pytest.raises(ValueError):
        encode.sc_address_xdr("C" * 10)


def test_fast_struct_equals_sdk() -> None:
    from reconcile_audit.emulator.state import escrow_struct

    for shape in ("standard", "escrow_extra_fields"):
        spec = dataclasses.replace(_escrow(), storage_shape=shape)
        assert encode.escrow_struct_xdr(spec) == escrow_struct(spec).to_xdr_bytes()


@pytest.mark.parametrize("with_code", [True, False])
def test_fast_transaction_data_equals_sdk(with_code: bool) -> None:
    from reconcile_audit.emulator.state import ESCROW_WASM_HASH

    contract = _escrow().contract_id
    keys = [instance_key(contract)]
    if with_code:
        keys.append(
            stellar_xdr.LedgerKey(
                type=stellar_xdr.LedgerEntryType.CONTRACT_CODE,
                contract_code=stellar_xdr.LedgerKeyContractCode(hash=stellar_xdr.Hash(ESCROW_WASM_HASH)),
            )
        )
    expected = stellar_xdr.SorobanTransactionData(
        ext=stellar_xdr.SorobanTransactionDataExt(0),
        resources=stellar_xdr.SorobanResources(
            footprint=stellar_xdr.LedgerFootprint(read_only=keys, read_write=[]),
            instructions=stellar_xdr.Uint32(123_456),
            disk_read_bytes=stellar_xdr.Uint32(7),
            write_bytes=stellar_xdr.Uint32(0),
        ),
        resource_fee=stellar_xdr.Int64(90_353),
    ).to_xdr_bytes()
    fast_keys = [encode.instance_key_xdr(contract)]
    if with_code:
        fast_keys.append(encode.contract_code_key_xdr(ESCROW_WASM_HASH))
    fast = encode.soroban_transaction_data_xdr(
        fast_keys, instructions=123_456, disk_read_bytes=7, write_bytes=0, resource_fee=90_353
    )
    assert fast == expected


def test_custodial_escrows_run_their_own_code_and_store_the_protocol_fee() -> None:
    from reconcile_audit.emulator.state import CUSTODIAL_ESCROW_WASM_HASH, ESCROW_WASM_HASH

    for custodial, wasm_hash in ((False, ESCROW_WASM_HASH), (True, CUSTODIAL_ESCROW_WASM_HASH)):
        entry = escrow_instance_entry(_escrow(custodial=custodial)).contract_data
        instance = entry.val.instance
        assert instance.executable.wasm_hash.hash == wasm_hash
        keys = [item.key.to_xdr() for item in instance.storage.sc_map]
        fee = scval.to_vec([scval.to_symbol("ProtocolFeeBps")]).to_xdr()
        assert (fee in keys) == custodial


def test_a_wasm_token_is_not_a_stellar_asset_contract() -> None:
    sac = token_instance_entry(TokenSpec(contract_id=TOKEN)).contract_data.val.instance
    wasm = token_instance_entry(TokenSpec(contract_id=TOKEN, stellar_asset=False)).contract_data.val.instance
    assert sac.executable.type == stellar_xdr.ContractExecutableType.CONTRACT_EXECUTABLE_STELLAR_ASSET
    assert wasm.executable.type == stellar_xdr.ContractExecutableType.CONTRACT_EXECUTABLE_WASM
