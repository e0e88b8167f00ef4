"""The ledger reader's fast XDR path against stellar-sdk as the oracle, over every storage shape."""

from __future__ import annotations

import base64
import binascii
import random

import polars as pl
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from stellar_sdk import StrKey, scval
from stellar_sdk import xdr as sx

from reconcile_audit.compute.ledger import xdr as lx
from reconcile_audit.compute.ledger.columns import ESCROW_COLUMNS, ColumnLayout, decode_escrow_columns
from reconcile_audit.emulator import state as es

I128_MIN, I128_MAX = -(2**127), 2**127 - 1
RNG = random.Random(7)
TOKEN = es.TokenSpec(contract_id=es.random_contract_id(RNG))
ADMIN = es.random_account_id(RNG)
SME = es.random_account_id(RNG)

i128s = st.integers(I128_MIN, I128_MAX)
symbols = st.from_regex(r"[A-Za-z0-9_]{1,32}", fullmatch=True)
hashes = st.binary(min_size=32, max_size=32)


def spec(**changes) -> es.EscrowSpec:
    values = {
        "contract_id": es.random_contract_id(RNG),
        "invoice_id": "INV_0001",
        "funded_amount": 12_345_000_000,
        "amount": 50_000_000_000,
        "funding_target": 50_000_000_000,
        "funding_token": TOKEN.contract_id,
        "admin": ADMIN,
        "sme_address": SME,
    }
    values.update(changes)
    return es.EscrowSpec(**values)


def entry_bytes(s: es.EscrowSpec) -> bytes:
    return es.escrow_instance_entry(s).to_xdr_bytes()


def expected(s: es.EscrowSpec) -> lx.EscrowInstance:
    escrow = (
        lx.EscrowFields(s.invoice_id, s.funded_amount, s.amount, s.funding_target, s.status)
        if s.has_escrow
        else None
    )
    token = None if s.storage_shape == "no_funding_token" else s.funding_token
    return lx.EscrowInstance(
        StrKey.decode_contract(s.contract_id),
        escrow,
        token,
        s.distributed_principal,
        es.escrow_wasm_hash(s),
        s.custodial,
    )


def as_instance(row: dict) -> lx.EscrowInstance:
    """A row of the columnar path (ESCROW_COLUMNS) as the per-entry decoder's value."""
    principal = row["distributed_principal"]
    return lx.EscrowInstance(
        row["contract_hash"],
        lx.EscrowFields(
            row["escrow_invoice_id"],
            int(row["funded_amount"]),
            int(row["amount"]),
            int(row["funding_target"]),
            row["escrow_status"],
        ),
        row["funding_token"],
        None if principal is None else int(principal),
        row["wasm_hash"],
        row["protocol_fee"],
    )


# --- keys ------------------------------------------------------------------------------------


@settings(deadline=None)  # timing varies on shared CI machines; correctness is what is tested
@given(hashes)
def test_instance_key_matches_sdk_and_emulator(raw: bytes) -> None:
    contract_id = StrKey.encode_contract(raw)
    fast = lx.instance_key(contract_id)
    assert fast == lx.instance_key_sdk(contract_id) == es.instance_key(contract_id).to_xdr()
    assert lx.key_contract_hash(fast) == raw
    assert lx.contract_id_of(raw) == contract_id


def test_every_key_the_reader_builds_names_its_entry_s_owner() -> None:
    """The sweep checks each entry's owner against its key: an escrow's instance key holds the
    escrow, a balance key the token that owns the balance entry."""
    escrow, token = spec(), spec().funding_token
    escrow_hash, token_hash = StrKey.decode_contract(escrow.contract_id), StrKey.decode_contract(token)
    keys = [lx.instance_key(escrow.contract_id), lx.balance_key_of_hashes(token_hash, escrow_hash)]
    assert keys[1] == lx.balance_key_sdk(token, escrow.contract_id)
    assert [lx.key_owner(key) for key in keys] == [escrow_hash, token_hash]
    assert lx.key_owners(keys).to_list() == [escrow_hash, token_hash]


def _sdk_hash(text: str) -> bytes | None:
    try:
        return StrKey.decode_contract(text)
    except (ValueError, TypeError):
        return None


def _fast_hash(text: str) -> bytes | None:
    try:
        return lx.contract_hash(text)
    except ValueError:
        return None


@settings(deadline=None)
@given(hashes, st.integers(0, 55), st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567a1=-"))
def test_contract_hash_accepts_and_rejects_like_sdk(raw: bytes, index: int, char: str) -> None:
    valid = StrKey.encode_contract(raw)
    mutated = valid[:index] + char + valid[index + 1 :]
    for text in (
        valid,
        mutated,
        valid.lower(),
        valid[:-1],
        valid + "A",
        StrKey.encode_ed25519_public_key(raw),
    ):
        assert _fast_hash(text) == _sdk_hash(text), text


@settings(deadline=None)
@given(st.text(max_size=60))
def test_contract_hash_rejects_garbage_like_sdk(text: str) -> None:
    assert _fast_hash(text) == _sdk_hash(text)


# --- escrow entries --------------------------------------------------------------------------


@pytest.mark.parametrize("shape", es.STORAGE_SHAPES)
@pytest.mark.parametrize("has_escrow", [True, False])
@pytest.mark.parametrize("principal", [None, 0, 999])
@pytest.mark.parametrize("custodial", [False, True])
def test_every_storage_shape_fast_equals_sdk(
    shape: str, has_escrow: bool, principal: int | None, custodial: bool
) -> None:
    """Custody too: the Wasm hash, and whether ProtocolFeeBps is stored, on every path."""
    s = spec(storage_shape=shape, has_escrow=has_escrow, distributed_principal=principal, custodial=custodial)
    buf = entry_bytes(s)
    fast = lx.decode_escrow_fast(buf)
    assert fast is not None, "the fast path should recognise every shape the platform writes"
    assert fast == lx.decode_escrow_sdk(buf) == expected(s)
    assert lx.decode_escrow_entry(base64.b64encode(buf).decode()) == expected(s)


@pytest.mark.parametrize("shape", es.STORAGE_SHAPES)
def test_learned_templates_read_other_escrows_of_the_shape(shape: str) -> None:
    first, second = (
        spec(storage_shape=shape),
        spec(storage_shape=shape, invoice_id="Z" * 32, funded_amount=-7),
    )
    lx.decode_escrow_fast(entry_bytes(first))
    assert (
        lx._decode_by_template(entry_bytes(second))
        == lx.decode_escrow_sdk(entry_bytes(second))
        == expected(second)
    )


def test_template_rejects_an_invoice_id_whose_length_lies() -> None:
    s = spec(invoice_id="ABCDE")
    good = entry_bytes(s)
    lx.decode_escrow_fast(good)
    at = good.index(b"ABCDE") - 4
    lying = good[:at] + (4).to_bytes(4, "big") + good[at + 4 :]  # says 4 bytes, 5 follow
    assert lx._decode_by_template(lying) is None
    assert lx.decode_escrow_fast(lying) is None or lx.decode_escrow_fast(lying) == _oracle(lying)


def test_lookalike_keys_are_not_the_escrow() -> None:
    # extra_keys holds Symbol("Escrow"), Vec[Symbol("EscrowV2")], Vec[Symbol("Escrow"), U32] with decoy structs.
    s = spec(storage_shape="extra_keys", invoice_id="REAL", funded_amount=5)
    got = lx.decode_escrow_fast(entry_bytes(s))
    assert got is not None and got.escrow is not None
    assert (got.escrow.invoice_id, got.escrow.funded_amount) == ("REAL", 5)
    assert got.funding_token == TOKEN.contract_id


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    funded=i128s,
    amount=i128s,
    target=i128s,
    principal=st.none() | i128s,
    invoice_id=symbols,
    status=st.integers(0, 2**32 - 1),
    shape=st.sampled_from(es.STORAGE_SHAPES),
    custodial=st.booleans(),
    raw=hashes,
)
@example(I128_MIN, I128_MAX, -1, I128_MIN, "x" * 32, 2**32 - 1, "standard", True, bytes(32))
@example(0, -(2**64), 2**64, 2**63, "funded_amount", 0, "extra_keys", False, b"\xff" * 32)
@example(1, 2, 3, None, "I", 0, "minimal", True, bytes(32))
def test_generated_values_fast_equals_sdk(
    funded, amount, target, principal, invoice_id, status, shape, custodial, raw
) -> None:
    """Every path, the columns too (issue 14): each shape the platform writes with a token is
    taken as columns, and read as stellar-sdk reads it."""
    s = spec(
        contract_id=StrKey.encode_contract(raw),
        funded_amount=funded,
        amount=amount,
        funding_target=target,
        distributed_principal=principal,
        invoice_id=invoice_id,
        status=status,
        storage_shape=shape,
        custodial=custodial,
    )
    buf = entry_bytes(s)
    assert (
        lx.decode_escrow_walk(buf) == lx.decode_escrow_fast(buf) == lx.decode_escrow_sdk(buf) == expected(s)
    )
    layout = ColumnLayout.of(buf)
    columns = decode_escrow_columns(pl.Series([buf]), pl.Series([raw]), [] if layout is None else [layout])
    assert columns.schema == ESCROW_COLUMNS
    assert (layout is None) == (shape == "no_funding_token")
    assert [as_instance(row) for row in columns.iter_rows(named=True)] == (
        [] if layout is None else [expected(s)]
    )


def _oracle(buf: bytes) -> lx.EscrowInstance | str:
    try:
        return lx.decode_escrow_sdk(buf)
    except lx.EntryDecodeError as exc:
        return f"error: {exc}"


@settings(max_examples=300, deadline=None)
@given(
    shape=st.sampled_from(es.STORAGE_SHAPES),
    cut=st.integers(0, 2000),
    flip_at=st.integers(0, 2000),
    flip=st.integers(1, 255),
)
def test_corrupt_entries_never_disagree_with_sdk(shape: str, cut: int, flip_at: int, flip: int) -> None:
    good = entry_bytes(spec(storage_shape=shape, distributed_principal=1))
    truncated = good[: cut % len(good)]
    flipped = bytearray(good)
    flipped[flip_at % len(good)] ^= flip
    lx.decode_escrow_fast(good)  # the template of this shape is learnt
    for buf in (truncated, bytes(flipped), good + b"\x00\x00\x00\x00"):
        oracle = _oracle(buf)
        # The fast paths may decline (None) but must never accept what the SDK rejects, nor differ.
        for fast in (lx.decode_escrow_fast(buf), lx.decode_escrow_walk(buf), lx._decode_by_template(buf)):
            assert fast is None or fast == oracle
    # The columns, from the layout of the good entry: a corrupt one is declined or read the same.
    layout = ColumnLayout.of(good)
    if layout is not None:
        bufs = [truncated, bytes(flipped), good + b"\x00\x00\x00\x00"]
        owner = good[12:44]
        taken = decode_escrow_columns(pl.Series(bufs, dtype=pl.Binary), pl.Series([owner] * 3), [layout])
        for row in taken.iter_rows(named=True):
            assert as_instance(row) == _oracle(bufs[row["row"]])


def _key(name: str) -> sx.SCVal:
    return scval.to_vec([scval.to_symbol(name)])


def _custom_entry(storage: list[tuple[sx.SCVal, sx.SCVal]]) -> bytes:
    """An instance entry with exactly ``storage`` (built with stellar-sdk, in the given order)."""
    return sx.LedgerEntryData(
        type=sx.LedgerEntryType.CONTRACT_DATA,
        contract_data=sx.ContractDataEntry(
            ext=sx.ExtensionPoint(0),
            contract=scval.to_address(es.random_contract_id(RNG)).address,
            key=sx.SCVal(sx.SCValType.SCV_LEDGER_KEY_CONTRACT_INSTANCE),
            durability=sx.ContractDataDurability.PERSISTENT,
            val=sx.SCVal(
                sx.SCValType.SCV_CONTRACT_INSTANCE,
                instance=sx.SCContractInstance(
                    executable=sx.ContractExecutable(
                        sx.ContractExecutableType.CONTRACT_EXECUTABLE_WASM, wasm_hash=sx.Hash(bytes(32))
                    ),
                    storage=sx.SCMap([sx.SCMapEntry(key=k, val=v) for k, v in storage]),
                ),
            ),
        ),
    ).to_xdr_bytes()


def _escrow_struct(**overrides: sx.SCVal | None) -> sx.SCVal:
    fields = {
        "amount": scval.to_int128(10),
        "funded_amount": scval.to_int128(5),
        "funding_target": scval.to_int128(10),
        "invoice_id": scval.to_symbol("INV_X"),
        "status": scval.to_uint32(0),
    }
    fields.update(overrides)
    return scval.to_struct({k: v for k, v in fields.items() if v is not None})


@pytest.mark.parametrize(
    ("storage", "message"),
    [
        (
            [(_key("Escrow"), _escrow_struct(funded_amount=scval.to_uint64(5)))],
            "Escrow.funded_amount is SCV_U64",
        ),
        ([(_key("Escrow"), _escrow_struct(invoice_id=None))], "Escrow has no field invoice_id"),
        ([(_key("Escrow"), scval.to_uint32(1))], "Escrow is SCV_U32, not a struct"),
        ([(_key("Escrow"), _escrow_struct(status=scval.to_int32(1)))], "Escrow.status is SCV_I32"),
        (
            [(_key("Escrow"), _escrow_struct()), (_key("FundingToken"), scval.to_address(ADMIN))],
            "FundingToken is a SC_ADDRESS_TYPE_ACCOUNT address",
        ),
        (
            [(_key("Escrow"), _escrow_struct()), (_key("DistributedPrincipal"), scval.to_int64(1))],
            "DistributedPrincipal is SCV_I64",
        ),
    ],
)
def test_malformed_escrow_is_an_error_with_cause(storage, message: str) -> None:
    buf = _custom_entry(storage)
    assert lx.decode_escrow_fast(buf) is None
    with pytest.raises(lx.EntryDecodeError, match=message.replace(".", r"\.")):
        lx.decode_escrow_entry(base64.b64encode(buf).decode())


def test_fast_path_declines_unknown_value_types_and_sdk_reads_them() -> None:
    error = sx.SCVal(
        sx.SCValType.SCV_ERROR, error=sx.SCError(sx.SCErrorType.SCE_CONTRACT, contract_code=sx.Uint32(3))
    )
    buf = _custom_entry([(_key("Escrow"), _escrow_struct()), (_key("LastError"), error)])
    assert lx.decode_escrow_fast(buf) is None
    got = lx.decode_escrow_entry(base64.b64encode(buf).decode())
    assert got.escrow == lx.EscrowFields("INV_X", 5, 10, 10, 0)


def test_not_an_instance_entry() -> None:
    account = sx.LedgerEntryData.from_xdr_bytes(entry_bytes(spec()))
    account.contract_data.durability = sx.ContractDataDurability.TEMPORARY
    with pytest.raises(lx.EntryDecodeError, match="TEMPORARY"):
        lx.decode_escrow_entry(account.to_xdr())
    with pytest.raises(lx.EntryDecodeError, match="not base64"):
        lx.decode_escrow_entry("not base64!")
    with pytest.raises(lx.EntryDecodeError, match="undecodable"):
        lx.decode_escrow_entry(base64.b64encode(b"\x00\x00\x00\x06junk").decode())


# --- token entries ---------------------------------------------------------------------------


@settings(deadline=None)
@given(
    decimals=st.none() | st.integers(0, 2**32 - 1),
    name=st.text(max_size=20),
    symbol=st.from_regex(r"[A-Z]{1,12}", fullmatch=True) | st.text(max_size=40),
    stellar_asset=st.booleans(),
)
def test_token_fast_equals_sdk(decimals, name, symbol, stellar_asset) -> None:
    token = es.TokenSpec(
        contract_id=TOKEN.contract_id,
        decimals=decimals,
        name=name,
        symbol=symbol,
        stellar_asset=stellar_asset,
    )
    buf = es.token_instance_entry(token).to_xdr_bytes()
    fast = lx.decode_token_fast(buf)
    assert fast == lx.decode_token_sdk(buf)
    assert fast is not None and fast.decimals == decimals
    assert (fast.problem is None) == (decimals is not None)
    assert fast.stellar_asset == stellar_asset  # whose balances sit in Balance entries
    # The symbol names the token to people: short printable text, else nothing.
    readable = len(symbol.encode()) <= 32 and symbol.isprintable() and symbol.strip() != ""
    assert fast.symbol == (symbol if decimals is not None and readable else None)


def test_token_symbol_that_is_not_a_string_is_left_out() -> None:
    metadata = scval.to_struct({"decimal": scval.to_uint32(7), "symbol": scval.to_symbol("USDC")})
    buf = _custom_entry([(scval.to_symbol("METADATA"), metadata)])
    assert lx.decode_token_fast(buf) is None  # the SDK path decides
    got = lx.decode_token_entry(base64.b64encode(buf).decode())
    assert (got.decimals, got.symbol, got.problem) == (7, None, None)


def test_token_metadata_without_decimal() -> None:
    buf = _custom_entry([(scval.to_symbol("METADATA"), scval.to_struct({"name": scval.to_string("X")}))])
    assert lx.decode_token_fast(buf) is None
    got = lx.decode_token_entry(base64.b64encode(buf).decode())
    assert got.decimals is None and got.problem == "METADATA has no field decimal"


# --- base64 of a whole answer at once --------------------------------------------------------


def _a2b(text: str) -> bytes | None:
    try:
        return lx.decode_base64(text)
    except lx.EntryDecodeError:
        return None


def _binascii(text: str) -> bytes | None:
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        return None


b64_noise = st.text(alphabet="ABCQRxyz0129+/=-_ \n\t\x00é\ud800", max_size=12)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.binary(max_size=40), max_size=6),
    st.lists(b64_noise, max_size=6),
    st.lists(st.tuples(st.integers(0, 60), st.sampled_from("AQR/+=-_ \n\x00é")), max_size=6),
)
def test_base64_batch_never_disagrees_with_binascii(
    blobs: list[bytes], noise: list[str], edits: list[tuple[int, str]]
) -> None:
    canonical = [base64.b64encode(blob).decode() for blob in blobs]
    edited = [
        text[: at % (len(text) + 1)] + char + text[at % (len(text) + 1) + 1 :]
        for text in canonical
        for at, char in edits
    ]
    texts = canonical + noise + edited
    got = lx.decode_base64_batch(texts)
    assert len(got) == len(texts)
    for text, blob in zip(texts, got, strict=True):
        # None only sends the text the binascii way; a value must be what binascii decodes.
        assert blob is None or blob == _binascii(text) == _a2b(text), text
    # Text polars cannot hold sends the whole batch the binascii way; canonical text alone never.
    assert lx.decode_base64_batch(canonical) == blobs, "canonical base64 should take the vectorised way"


@pytest.mark.parametrize(
    "text",
    [
        "QR==",  # non-canonical padding bits: binascii accepts them, so they must go its way
        "QQ",  # no padding
        "QQ==\n",
        "Q Q==",
        "QQ==QQ==",
        "-_-_",
        "====",
        "é",
    ],
)
def test_base64_batch_sends_doubtful_text_the_binascii_way(text: str) -> None:
    assert lx.decode_base64_batch(["QUJD", text]) == [b"ABC", None]


def test_base64_batch_polars_cannot_hold_goes_the_binascii_way_whole() -> None:
    assert lx.decode_base64_batch(["QUJD", "\ud800"]) == [None, None]  # a lone surrogate


def test_base64_batch_of_real_entries_is_their_bytes() -> None:
    bufs = [entry_bytes(spec(storage_shape=shape)) for shape in es.STORAGE_SHAPES]
    texts = [base64.b64encode(buf).decode() for buf in bufs]
    assert lx.decode_base64_batch(texts) == bufs
    assert lx.decode_base64_batch([]) == []


# --- Stellar Asset Contract balance entries (issue 11: what the escrow holds) ------------------


def _balance_entry(token: str, holder: str, amount: int, authorized: bool, clawback: bool) -> bytes:
    entry = es.balance_entry(token, holder, amount)
    entry.contract_data.val = scval.to_struct(
        {
            "amount": scval.to_int128(amount),
            "authorized": scval.to_bool(authorized),
            "clawback": scval.to_bool(clawback),
        }
    )
    return entry.to_xdr_bytes()


@settings(deadline=None)
@given(
    token=st.binary(min_size=32, max_size=32),
    holder=st.binary(min_size=32, max_size=32),
    amount=st.integers(min_value=-(2**127), max_value=2**127 - 1),
    authorized=st.booleans(),
    clawback=st.booleans(),
)
def test_balance_fast_equals_sdk(token, holder, amount, authorized, clawback) -> None:
    token_id, holder_id = StrKey.encode_contract(token), StrKey.encode_contract(holder)
    assert lx.balance_key_of_hashes(token, holder) == lx.balance_key_sdk(token_id, holder_id)
    buf = _balance_entry(token_id, holder_id, amount, authorized, clawback)
    fast = lx.decode_balance_fast(buf)
    assert fast == lx.decode_balance_sdk(buf) == lx.TokenBalance(amount, authorized, clawback)
    assert lx.decode_balance_bytes(buf) == fast


def test_what_is_not_a_balance_entry_is_refused_with_a_reason() -> None:
    escrow = entry_bytes(spec())
    assert lx.decode_balance_fast(escrow) is None
    with pytest.raises(lx.EntryDecodeError, match="not Vec"):
        lx.decode_balance_sdk(escrow)
    other = es.balance_entry(TOKEN.contract_id, TOKEN.contract_id, 5)
    other.contract_data.val = scval.to_struct({"amount": scval.to_int64(5)})
    assert lx.decode_balance_fast(other.to_xdr_bytes()) is None
    with pytest.raises(lx.EntryDecodeError, match="amount is SCV_I64"):
        lx.decode_balance_sdk(other.to_xdr_bytes())
