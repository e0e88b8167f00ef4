"""Escrow entries decoded as columns: layouts, what the path declines, and the keys' owners.
Generated and corrupted entries against stellar-sdk, for every path the columns included, are in
test_ledger_xdr.py."""

from __future__ import annotations

import polars as pl
import pytest
from stellar_sdk import StrKey

from reconcile_audit.compute.ledger import columns as lc
from tests.compute.test_ledger_xdr import (
    as_instance,
    entry_bytes,
    expected,
    spec,
)


def test_one_layout_reads_many_entries_in_order() -> None:
    specs = [spec(invoice_id=f"INV_{i:04d}", funded_amount=i * 7 - 50, status=i % 5) for i in range(300)]
    bufs = [entry_bytes(s) for s in specs]
    layout = lc.ColumnLayout.of(bufs[0])
    assert layout is not None
    owners = pl.Series([StrKey.decode_contract(s.contract_id) for s in specs], dtype=pl.Binary)
    taken = lc.decode_escrow_columns(pl.Series(bufs, dtype=pl.Binary), owners, [layout])
    assert taken.get_column("row").to_list() == list(range(300))
    assert [as_instance(row) for row in taken.iter_rows(named=True)] == [expected(s) for s in specs]


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


def test_learn_layout_learns_each_layout_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lc, "_layouts", [])
    buf = entry_bytes(spec(invoice_id="ONCE"))
    assert lc.learn_layout(buf) is True
    assert lc.learn_layout(entry_bytes(spec(invoice_id="TWIN"))) is False  # same length, same layout
    assert lc.learn_layout(entry_bytes(spec(storage_shape="no_funding_token"))) is False
    monkeypatch.setattr(lc, "MAX_LAYOUTS", 1)
    assert lc.learn_layout(entry_bytes(spec(invoice_id="LONGER_ID"))) is False
