"""Resolve: address precedence, ESCROW_ADDR_BY_INVOICE, strkey and invoice-id validation."""

from __future__ import annotations

import json
import os

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from stellar_sdk import Keypair, StrKey

from reconcile_audit.compute import resolve, strkey
from reconcile_audit.compute.schemas import INVOICES, RESOLVED
from reconcile_audit.errors import ConfigError

C1 = StrKey.encode_contract(b"\x01" * 32)
C2 = StrKey.encode_contract(b"\x02" * 32)
C3 = StrKey.encode_contract(b"\x03" * 32)
BAD_CHECKSUM = C1[:-1] + ("A" if C1[-1] != "A" else "B")
ACCOUNT = Keypair.from_raw_ed25519_seed(b"\x05" * 32).public_key


def _invoices(rows: list[tuple[str | None, str | None]]) -> pl.DataFrame:
    """(invoice_id, op_contract_id) pairs as an INVOICES frame."""
    return pl.DataFrame(
        {
            "invoice_pk": [f"pk-{i}" for i in range(len(rows))],
            "invoice_id": [r[0] for r in rows],
            "tenant_id": "t",
            "status": "funded",
            "currency": "USDC",
            "db_total_funded": "0",
            "total_was_null": False,
            "summary_row_count": 1,
            "op_contract_id": [r[1] for r in rows],
            "db_total_released": None,
            "db_available": None,
            "db_ledger_sequence": None,
        },
        schema=INVOICES,
    )


def _mapping(*entries: tuple[str, str, bool | None]) -> str:
    mappings = []
    for invoice_id, address, active in entries:
        entry: dict[str, object] = {"invoiceId": invoice_id, "escrowAddress": address}
        if active is not None:
            entry["isActive"] = active
        mappings.append(entry)
    return json.dumps({"mappings": mappings})


def test_precedence_mapping_fallback_and_conflicts() -> None:
    invoices = _invoices(
        [
            ("op-only", C1),
            ("map-only", None),
            ("both-agree", C1),
            ("both-differ", C2),
            ("inactive-map", None),
            ("neither", None),
            ("blank-op", "   "),
            ("padded-op", f"  {C3}\t"),
            ("implicitly-active", None),
        ]
    )
    mapping = _mapping(
        ("map-only", C2, True),
        ("both-agree", f" {C1} ", True),
        ("both-differ", C3, True),
        ("inactive-map", C3, False),
        ("blank-op", C2, True),
        ("implicitly-active", C1, None),
        ("not-extracted", C1, True),
    )
    resolved = resolve.resolve_addresses(invoices, mapping)
    assert resolved.columns == [*RESOLVED.names(), "address_conflict"]
    assert resolved.height == invoices.height
    assert resolved.get_column("invoice_pk").to_list() == invoices.get_column("invoice_pk").to_list()
    got = {
        r["invoice_id"]: (r["contract_id"], r["address_source"], r["address_conflict"], r["address_error"])
        for r in resolved.iter_rows(named=True)
    }
    assert got == {
        "op-only": (C1, "escrow_operations", None, None),
        "map-only": (C2, "escrow_addr_by_invoice", None, None),
        "both-agree": (C1, "escrow_operations", None, None),
        "both-differ": (C2, "escrow_operations", C3, None),
        "inactive-map": (None, None, None, None),
        "neither": (None, None, None, None),
        "blank-op": (C2, "escrow_addr_by_invoice", None, None),
        "padded-op": (C3, "escrow_operations", None, None),
        "implicitly-active": (C1, "escrow_addr_by_invoice", None, None),
    }


def test_no_mapping_at_all() -> None:
    invoices = _invoices([("a", C1), ("b", None)])
    for raw in (None, "", "   "):
        resolved = resolve.resolve_addresses(invoices, raw)
        assert resolved.get_column("contract_id").to_list() == [C1, None]


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "mappings"),
        ('{"mappings": {}}', "mappings"),
        ('{"mappings": [1]}', r"mappings\[0\] is not an object"),
        ('{"mappings": [{"invoiceId": "a"}]}', "escrowAddress"),
        ('{"mappings": [{"invoiceId": 5, "escrowAddress": "C"}]}', "invoiceId"),
        ('{"mappings": [{"invoiceId": "a", "escrowAddress": "C", "isActive": "yes"}]}', "isActive"),
        (_mapping(("a", C1, True), ("a", C2, True)), "two active mappings"),
    ],
)
def test_malformed_mapping_is_a_config_error(raw: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem) as raised:
        resolve.resolve_addresses(_invoices([("a", None)]), raw)
    assert raised.value.setting == "ESCROW_ADDR_BY_INVOICE"


def test_duplicate_mapping_for_one_invoice_is_fine_when_it_agrees_or_is_inactive() -> None:
    raw = _mapping(("a", C1, True), ("a", C1, True), ("a", C2, False))
    assert resolve.parse_escrow_addr_by_invoice(raw) == {"a": C1}


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        (C1, None),
        (BAD_CHECKSUM, "bad checksum"),
        (ACCOUNT, "account address (G...)"),
        ("M" + C1[1:], "muxed account"),
        ("S" + C1[1:], "secret seed"),
        ("Z" + C1[1:], "wrong prefix 'Z'"),
        (C1[:-1], "wrong length: 55 characters"),
        (C1 + "A", "wrong length: 57 characters"),
        ("C", "wrong length: 1 characters"),
        (C1.lower(), "upper case only"),
        (C1[:-1] + "1", "outside the strkey alphabet"),
        ("C" + "é" * 55, "outside the strkey alphabet"),
        ("'; DROP TABLE x; --", "outside the strkey alphabet"),
    ],
)
def test_address_errors(address: str, expected: str | None) -> None:
    got = resolve.contract_address_error(address)
    if expected is None:
        assert got is None
    else:
        assert got is not None and expected in got
    resolved = resolve.resolve_addresses(_invoices([("inv", address)]), None)
    assert resolved.item(0, "address_error") == got


@pytest.mark.parametrize(
    ("invoice_id", "expected"),
    [
        ("INV-1", None),
        ("a", None),
        ("9.a_b:c-d", None),
        ("A" * 128, None),
        ("A" * 129, "longer than 128"),
        ("", "empty"),
        (None, "empty"),
        ("-leading", "start with a letter or digit"),
        ("_x", "start with a letter or digit"),
        ("'; DROP TABLE invoices; --", "start with a letter or digit"),
        ("has space", "may only contain"),
        ("emoji🦄", "may only contain"),
        ("ünïcødé", "start with a letter or digit"),
        ("u-ünïcødé", "may only contain"),
        ("INV-1\n", "may only contain"),  # Python's $ would accept the newline; polars' does not
        ("ctl\x01", "may only contain"),
    ],
)
def test_invoice_id_rule(invoice_id: str | None, expected: str | None) -> None:
    resolved = resolve.resolve_addresses(_invoices([(invoice_id, C1)]), None)
    error = resolved.item(0, "invoice_id_error")
    if expected is None:
        assert error is None
    else:
        assert error is not None and expected in error


_BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


@settings(max_examples=400, deadline=None)
@given(
    payload=st.binary(min_size=32, max_size=32),
    version=st.sampled_from(["contract", "account", "mutate", "random"]),
    position=st.integers(min_value=0, max_value=55),
    replacement=st.sampled_from(_BASE32),
    random_text=st.text(alphabet=_BASE32, min_size=56, max_size=56),
)
def test_checksum_fast_path_agrees_with_stellar_sdk(
    payload: bytes, version: str, position: int, replacement: str, random_text: str
) -> None:
    if version == "contract":
        address = StrKey.encode_contract(payload)
    elif version == "account":
        address = StrKey.encode_ed25519_public_key(payload)
    elif version == "mutate":
        address = StrKey.encode_contract(payload)
        address = address[:position] + replacement + address[position + 1 :]
    else:
        address = "C" + random_text[1:]
    oracle = StrKey.is_valid_contract(address)
    assert (resolve.contract_address_error(address) is None) == oracle
    if address.startswith("C"):
        assert strkey.is_valid_contract(address) == oracle


def test_many_distinct_addresses_validate_in_one_pass() -> None:
    addresses = [StrKey.encode_contract(os.urandom(32)) for _ in range(2_000)]
    addresses[7] = addresses[7][:-1] + ("A" if addresses[7][-1] != "A" else "B")
    invoices = _invoices([(f"INV-{i}", a) for i, a in enumerate(addresses)])
    resolved = resolve.resolve_addresses(invoices, None)
    errors = resolved.get_column("address_error").to_list()
    assert errors[7] == "bad checksum"
    assert errors.count(None) == 1_999
    assert resolved.get_column("invoice_id").to_list() == invoices.get_column("invoice_id").to_list()
