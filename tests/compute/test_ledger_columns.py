"""Escrow entries decoded as columns, against stellar-sdk as the oracle: every row the columnar
path takes is what the SDK reads, and it declines whatever it cannot read exactly."""

from __future__ import annotations

import polars as pl
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from stellar_sdk import StrKey

from reconcile_audit.compute.ledger import columns as lc
from reconcile_audit.compute.ledger import xdr as lx
from reconcile_audit.emulator import state as es
from tests.compute.test_ledger_xdr import (
    I128_MAX,
    I128_MIN,
    entry_bytes,
    expected,
    hashes,
    i128s,
    spec,
    symbols,
)

TAKEN_SHAPES = tuple(shape for shape in es.STORAGE_SHAPES if shape != "no_funding_token")


def _decode(specs: list[es.EscrowSpec], bufs: list[bytes | None] | None = None) -> pl.DataFrame:
    bufs = [entry_bytes(s) for s in specs] if bufs is None else bufs
    layouts = [layout for buf in bufs if buf is not None and (layout := lc.ColumnLayout.of(buf))]
    owners = pl.Series([StrKey.decode_contract(s.contract_id) for s in specs], dtype=pl.Binary)
    return lc.decode_escrow_columns(pl.Series(bufs, dtype=pl.Binary), owners, layouts)


def _as_instance(row: dict) -> lx.EscrowInstance:
    """A row of ESCROW_COLUMNS as the per-entry decoder's value."""
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


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    funded=i128s,
    amount=i128s,
    target=i128s,
    principal=st.none() | i128s,
    invoice_id=symbols,
    status=st.integers(0, 2**32 - 1),
    shape=st.sampled_from(TAKEN_SHAPES),
    custodial=st.booleans(),
    raw=hashes,
)
@example(I128_MIN, I128_MAX, -1, I128_MIN, "x" * 32, 2**32 - 1, "standard", True, bytes(32))
@example(0, -(2**64), 2**64, 2**63, "I", 0, "extra_keys", False, b"\xff" * 32)
def test_generated_values_columns_equal_sdk(
    funded, amount, target, principal, invoice_id, status, shape, custodial, raw
) -> None:
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
    taken = _decode([s])
    assert taken.schema == lc.ESCROW_COLUMNS
    assert taken.height == 1, "every shape the platform writes with a token is taken as columns"
    row = taken.row(0, named=True)
    assert _as_instance(row) == lx.decode_escrow_sdk(entry_bytes(s)) == expected(s)
    assert row["token_hash"] == StrKey.decode_contract(s.funding_token)


def test_one_layout_reads_many_entries_in_order() -> None:
    specs = [spec(invoice_id=f"INV_{i:04d}", funded_amount=i * 7 - 50, status=i % 5) for i in range(300)]
    bufs = [entry_bytes(s) for s in specs]
    layout = lc.ColumnLayout.of(bufs[0])
    assert layout is not None
    owners = pl.Series([StrKey.decode_contract(s.contract_id) for s in specs], dtype=pl.Binary)
    taken = lc.decode_escrow_columns(pl.Series(bufs, dtype=pl.Binary), owners, [layout])
    assert taken.get_column("row").to_list() == list(range(300))
    assert [_as_instance(row) for row in taken.iter_rows(named=True)] == [expected(s) for s in specs]


def test_an_invoice_id_of_another_length_is_another_layout() -> None:
    short, long = spec(invoice_id="INV_1"), spec(invoice_id="INV_000000001")
    layout = lc.ColumnLayout.of(entry_bytes(short))
    owners = pl.Series([StrKey.decode_contract(s.contract_id) for s in (short, long)], dtype=pl.Binary)
    blobs = pl.Series([entry_bytes(short), entry_bytes(long)], dtype=pl.Binary)
    assert lc.decode_escrow_columns(blobs, owners, [layout]).get_column("row").to_list() == [0]
    both = [layout, lc.ColumnLayout.of(entry_bytes(long))]
    assert lc.decode_escrow_columns(blobs, owners, both).get_column("row").to_list() == [0, 1]


def test_no_layout_without_an_escrow_and_its_token() -> None:
    assert lc.ColumnLayout.of(entry_bytes(spec(storage_shape="no_funding_token"))) is None
    assert lc.ColumnLayout.of(entry_bytes(spec(has_escrow=False))) is None
    assert lc.ColumnLayout.of(b"\x00\x00\x00\x06 not an entry") is None


def test_declines_another_owner_a_missing_blob_and_ids_outside_the_symbol_alphabet() -> None:
    good = spec(invoice_id="ABCDE")
    buf = entry_bytes(good)
    layout = lc.ColumnLayout.of(buf)
    at = buf.index(b"ABCDE")
    odd_id = buf[:at] + b"AB-DE" + buf[at + 5 :]  # valid ASCII for the SDK, not a Soroban symbol
    other = spec(invoice_id="ABCDE")  # another contract: its key was asked, this entry answered
    owners = pl.Series([StrKey.decode_contract(s.contract_id) for s in (good, good, good, other)])
    blobs = pl.Series([buf, None, odd_id, buf], dtype=pl.Binary)
    assert lc.decode_escrow_columns(blobs, owners, [layout]).get_column("row").to_list() == [0]


def _oracle(buf: bytes) -> lx.EscrowInstance | str:
    try:
        return lx.decode_escrow_sdk(buf)
    except lx.EntryDecodeError as exc:
        return f"error: {exc}"


@settings(max_examples=300, deadline=None)
@given(
    shape=st.sampled_from(TAKEN_SHAPES),
    cut=st.integers(0, 2000),
    flip_at=st.integers(0, 2000),
    flip=st.integers(1, 255),
)
def test_corrupt_entries_are_declined_or_read_as_the_sdk_reads_them(
    shape: str, cut: int, flip_at: int, flip: int
) -> None:
    s = spec(storage_shape=shape, distributed_principal=1)
    good = entry_bytes(s)
    layout = lc.ColumnLayout.of(good)
    assert layout is not None
    flipped = bytearray(good)
    flipped[flip_at % len(good)] ^= flip
    bufs = [good[: cut % len(good)], bytes(flipped), good + b"\x00\x00\x00\x00"]
    owner = StrKey.decode_contract(s.contract_id)
    taken = lc.decode_escrow_columns(pl.Series(bufs, dtype=pl.Binary), pl.Series([owner] * 3), [layout])
    for row in taken.iter_rows(named=True):
        assert _as_instance(row) == _oracle(bufs[row["row"]])


def test_learn_layout_learns_each_layout_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lc, "_layouts", [])
    buf = entry_bytes(spec(invoice_id="ONCE"))
    assert lc.learn_layout(buf) is True
    assert lc.learn_layout(entry_bytes(spec(invoice_id="TWIN"))) is False  # same length, same layout
    assert lc.learn_layout(entry_bytes(spec(storage_shape="no_funding_token"))) is False
    monkeypatch.setattr(lc, "MAX_LAYOUTS", 1)
    assert lc.learn_layout(entry_bytes(spec(invoice_id="LONGER_ID"))) is False


def test_every_key_the_sweep_builds_names_its_owner_at_bytes_8_to_40() -> None:
    """The sweep checks each entry's owner against its key's bytes 8 to 40: an escrow's instance
    key holds the escrow, a balance key the token that owns the balance entry."""
    from reconcile_audit.compute.ledger import batched

    escrow, token = spec(), spec().funding_token
    escrow_hash, token_hash = StrKey.decode_contract(escrow.contract_id), StrKey.decode_contract(token)
    keys = [lx.instance_key(escrow.contract_id), lx.balance_key_of_hashes(token_hash, escrow_hash)]
    assert keys[1] == lx.balance_key_sdk(token, escrow.contract_id)
    assert [batched._owner(key) for key in keys] == [escrow_hash, token_hash]
    assert batched._owners(keys).to_list() == [escrow_hash, token_hash]
