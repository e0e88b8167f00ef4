"""Escrow instance entries decoded a whole read at a time, as columns (issue 14).

Decoding entry by entry (:func:`~reconcile_audit.compute.ledger.xdr.decode_escrow_bytes`) costs
the sweep's client about 4 µs of Python per escrow, and turning the decoded tuples into frame
columns about 3 µs more: at 1M escrows that was a third of the ledger stage's CPU, on the thread
every other stage waits for. Entries of one contract version with invoice ids of one length have
one byte layout, so this module reads their fields with vectorised polars slices over the whole
read instead, once per layout, and never builds a Python object per escrow.

A :class:`ColumnLayout` is learnt from an entry the walker has decoded (the same
:func:`~reconcile_audit.compute.ledger.xdr.escrow_layout` the regex templates compile from): its
size, every literal run of bytes (keys, tags, lengths, padding), and where each field sits. An
entry is taken only when it has exactly that size, every literal matches, its invoice id is 1 to
32 of ``[A-Za-z0-9_]`` and its owner is the contract whose key was asked for; anything else is
left to the entry-by-entry path, which decides as before. So a layout gap can cost time but never
change a result. tests/compute/test_ledger_xdr.py checks every taken row against
:func:`~reconcile_audit.compute.ledger.xdr.decode_escrow_sdk`, over generated and corrupted entries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

import polars as pl

from reconcile_audit.compute.ledger.xdr import contract_id_of, decode_escrow_walk, escrow_layout
from reconcile_audit.compute.schemas import stored_once

# What decode_escrow_columns returns: a row per entry taken. Amounts are exact i128 text, as in LEDGER.
ESCROW_COLUMNS: Final = pl.Schema(
    {
        "row": pl.UInt32,  # the entry's position in the blobs given
        "escrow_invoice_id": pl.String,
        "funded_amount": pl.String,
        "amount": pl.String,
        "funding_target": pl.String,
        "escrow_status": pl.Int64,
        "funding_token": pl.String,
        "distributed_principal": pl.String,  # null when the layout has no DistributedPrincipal
        "token_hash": pl.Binary,  # the funding token's contract hash (custody reads its balance)
        "contract_hash": pl.Binary,
        "wasm_hash": pl.Binary,  # null for a Stellar Asset Contract executable
        "protocol_fee": pl.Boolean,
    }
)
MAX_LAYOUTS: Final = 32  # one per contract version and invoice-id length, in practice a handful
_AMOUNTS: Final = ("funded_amount", "amount", "funding_target")
# The hex of one character of [A-Za-z0-9_], the symbols the platform's invoice ids use.
_ID_HEX: Final = r"^(?:3[0-9]|4[1-9a-f]|5[0-9af]|6[1-9a-f]|7[0-9a])+$"


@dataclass(frozen=True, slots=True)
class ColumnLayout:
    """The byte layout of escrow entries that hold an Escrow and a FundingToken."""

    size: int
    literals: tuple[tuple[int, bytes], ...]  # (offset, bytes), adjacent runs merged
    fields: Mapping[str, tuple[int, int]]  # field -> (offset, size)
    protocol_fee: bool

    @classmethod
    def of(cls, buf: bytes) -> ColumnLayout | None:
        """The layout of ``buf``; None unless the walker reads it as an escrow with its token."""
        found = decode_escrow_walk(buf)
        if found is None or found.escrow is None or found.funding_token is None:
            return None
        learnt = escrow_layout(buf)
        if learnt is None:
            return None
        parts, protocol_fee = learnt
        literals: list[tuple[int, bytes]] = []
        fields: dict[str, tuple[int, int]] = {}
        at = 0
        for part in parts:
            if part.literal is not None:
                literals.append((at, part.literal))
            elif part.name == "invoice_id":  # its length word, the symbol, then zero padding
                length = int.from_bytes(buf[at : at + 4], "big")
                literals += [(at, buf[at : at + 4]), (at + 4 + length, bytes(part.size - 4 - length))]
                fields["invoice_id"] = (at + 4, length)
            elif part.name is not None:
                fields[part.name] = (at, part.size)
            at += part.size
        if at != len(buf):
            return None
        return cls(len(buf), _merged(literals), MappingProxyType(fields), protocol_fee)


def _merged(literals: list[tuple[int, bytes]]) -> tuple[tuple[int, bytes], ...]:
    runs: list[tuple[int, bytes]] = []
    for offset, value in literals:
        if not value:
            continue
        if runs and runs[-1][0] + len(runs[-1][1]) == offset:
            runs[-1] = (runs[-1][0], runs[-1][1] + value)
        else:
            runs.append((offset, value))
    return tuple(runs)


_layouts: list[ColumnLayout] = []


def learn_layout(buf: bytes) -> bool:
    """Learn the layout of ``buf`` unless known, or too many are; True when one was added."""
    if len(_layouts) >= MAX_LAYOUTS:
        return False
    layout = ColumnLayout.of(buf)
    if layout is None or layout in _layouts:
        return False
    _layouts.append(layout)
    return True


def decode_escrow_columns(
    blobs: pl.Series, owners: pl.Series, layouts: Sequence[ColumnLayout] | None = None
) -> pl.DataFrame:
    """The ESCROW_COLUMNS of each entry of ``blobs`` (``LedgerEntryData`` bytes; null for one not
    to take) that a layout matches exactly and whose contract hash is ``owners`` at its row."""
    frame = pl.DataFrame({"blob": blobs, "owner": owners}).with_row_index("row")
    taken: list[pl.DataFrame] = []
    for layout in _layouts if layouts is None else layouts:
        if frame.is_empty():
            break
        sizes = frame.get_column("blob").bin.size()
        candidates = frame.filter(sizes == layout.size)
        if candidates.is_empty():
            continue
        matched = candidates.filter(_matches(layout))
        if not matched.is_empty():
            taken.append(matched.select(_fields(layout)))
            frame = frame.filter(~pl.col("row").is_in(matched.get_column("row").implode()))
    if not taken:
        return ESCROW_COLUMNS.to_frame()
    columns = pl.concat(taken)
    tokens = columns.get_column("token_hash").unique()
    names = pl.Series([contract_id_of(raw) for raw in tokens.to_list()], dtype=pl.String)
    token_ids = columns.get_column("token_hash").replace_strict(tokens, names, return_dtype=pl.String)
    return columns.with_columns(stored_once(token_ids.alias("funding_token"))).select(
        [pl.col(name).cast(dtype) for name, dtype in ESCROW_COLUMNS.items()]
    )


def _bytes_at(offset: int, size: int) -> pl.Expr:
    return pl.col("blob").bin.slice(offset, size)


def _matches(layout: ColumnLayout) -> pl.Expr:
    checks = [
        _bytes_at(offset, len(value)) == pl.lit(value, dtype=pl.Binary) for offset, value in layout.literals
    ]
    checks.append(_bytes_at(*layout.fields["hash"]) == pl.col("owner"))
    checks.append(_bytes_at(*layout.fields["invoice_id"]).bin.encode("hex").str.contains(_ID_HEX))
    return pl.all_horizontal(checks)


def _i128_text(offset: int) -> pl.Expr:
    return _bytes_at(offset, 16).bin.reinterpret(dtype=pl.Int128, endianness="big").cast(pl.String)


def _fields(layout: ColumnLayout) -> list[pl.Expr]:
    fields = layout.fields
    principal = fields.get("principal")
    wasm = fields.get("wasm")
    return [
        pl.col("row"),
        # Safe to read as text: _matches took only ids of ASCII letters, digits and underscores.
        _bytes_at(*fields["invoice_id"]).cast(pl.String).alias("escrow_invoice_id"),
        *(_i128_text(fields[name][0]).alias(name) for name in _AMOUNTS),
        _bytes_at(fields["status"][0], 4)
        .bin.reinterpret(dtype=pl.UInt32, endianness="big")
        .cast(pl.Int64)
        .alias("escrow_status"),
        _bytes_at(*fields["token"]).alias("token_hash"),
        (pl.lit(None, dtype=pl.String) if principal is None else _i128_text(principal[0])).alias(
            "distributed_principal"
        ),
        pl.col("owner").alias("contract_hash"),
        (pl.lit(None, dtype=pl.Binary) if wasm is None else _bytes_at(*wasm)).alias("wasm_hash"),
        pl.lit(layout.protocol_fee).alias("protocol_fee"),
    ]
