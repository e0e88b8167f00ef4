"""Fast XDR encoding of escrow instance entries and instance keys, for the emulator's bulk build.

stellar-sdk's pure-Python XDR costs about 300 µs per escrow entry, 30 s for 100k escrows. The
bytes of an entry are a fixed sequence of pieces, though: the storage keys and their order depend
only on the storage shape, so they are taken once from stellar-sdk's own encoding, and only the
per-escrow values (addresses, amounts, the invoice symbol) are packed here with ``struct``.
``tests/test_emulator_encode.py`` checks every shape byte for byte against ``state.py``'s
stellar-sdk builders, which stay the oracle.
"""

from __future__ import annotations

import binascii
import functools
import struct
from collections.abc import Callable
from typing import Final

from stellar_sdk import xdr as stellar_xdr

from reconcile_audit.emulator import state

_U32: Final = struct.Struct(">I").pack
_I128: Final = struct.Struct(">qQ").pack
_U64: Final = struct.Struct(">Q").pack
_I64: Final = struct.Struct(">q").pack

# XDR discriminants (Stellar-contract.x, Stellar-ledger-entries.x).
_SCV_U32: Final = _U32(stellar_xdr.SCValType.SCV_U32.value)
_SCV_U64: Final = _U32(stellar_xdr.SCValType.SCV_U64.value)
_SCV_I64: Final = _U32(stellar_xdr.SCValType.SCV_I64.value)
_SCV_I128: Final = _U32(stellar_xdr.SCValType.SCV_I128.value)
_SCV_SYMBOL: Final = _U32(stellar_xdr.SCValType.SCV_SYMBOL.value)
_SCV_MAP_PRESENT: Final = _U32(stellar_xdr.SCValType.SCV_MAP.value) + _U32(1)
_SCV_ADDRESS: Final = _U32(stellar_xdr.SCValType.SCV_ADDRESS.value)
_CONTRACT_DATA: Final = _U32(stellar_xdr.LedgerEntryType.CONTRACT_DATA.value)
_INSTANCE_KEY_TAIL: Final = _U32(stellar_xdr.SCValType.SCV_LEDGER_KEY_CONTRACT_INSTANCE.value) + _U32(
    stellar_xdr.ContractDataDurability.PERSISTENT.value
)
_EXT_V0: Final = _U32(0)
_WASM_INSTANCE_HEADS: Final = {
    wasm_hash: _U32(stellar_xdr.SCValType.SCV_CONTRACT_INSTANCE.value)
    + _U32(stellar_xdr.ContractExecutableType.CONTRACT_EXECUTABLE_WASM.value)
    + wasm_hash
    + _U32(1)  # storage map present
    for wasm_hash in (state.ESCROW_WASM_HASH, state.CUSTODIAL_ESCROW_WASM_HASH)
}
_ADDRESS_ACCOUNT: Final = _U32(stellar_xdr.SCAddressType.SC_ADDRESS_TYPE_ACCOUNT.value) + _U32(
    stellar_xdr.PublicKeyType.PUBLIC_KEY_TYPE_ED25519.value
)
_ADDRESS_CONTRACT: Final = _U32(stellar_xdr.SCAddressType.SC_ADDRESS_TYPE_CONTRACT.value)

# strkey version bytes (SEP-23): G = 6 << 3, C = 2 << 3.
_VERSION_ACCOUNT: Final = 6 << 3
_VERSION_CONTRACT: Final = 2 << 3
_MASK64: Final = (1 << 64) - 1
_BASE32_ALPHABET: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_BASE32: Final = frozenset(_BASE32_ALPHABET)
_TO_INT_DIGITS: Final = str.maketrans(_BASE32_ALPHABET, "0123456789abcdefghijklmnopqrstuv")


@functools.lru_cache(maxsize=4096)
def sc_address_xdr(address: str) -> bytes:
    """XDR ``SCAddress`` of a ``G...`` or ``C...`` strkey, checksum verified like stellar-sdk does."""
    if len(address) != 56 or not _BASE32.issuperset(address):
        raise ValueError(f"{address!r} is not a 56-character base32 G... or C... strkey")
    # base64.b32decode is pure Python; int() parses base 32 in C once the alphabet is mapped.
    raw = int(address.translate(_TO_INT_DIGITS), 32).to_bytes(35, "big")
    payload, checksum = raw[:-2], raw[-2:]
    if binascii.crc_hqx(payload, 0).to_bytes(2, "little") != checksum:
        raise ValueError(f"{address!r} has a wrong checksum")
    if payload[0] == _VERSION_ACCOUNT:
        return _ADDRESS_ACCOUNT + payload[1:]
    if payload[0] == _VERSION_CONTRACT:
        return _ADDRESS_CONTRACT + payload[1:]
    raise ValueError(f"{address!r} is neither an account (G...) nor a contract (C...) address")


def sc_val_address(address: str) -> bytes:
    return _SCV_ADDRESS + sc_address_xdr(address)


def sc_val_i128(value: int) -> bytes:
    return _SCV_I128 + _I128(value >> 64, value & _MASK64)


def sc_val_symbol(text: str) -> bytes:
    data = text.encode("ascii")
    return _SCV_SYMBOL + _U32(len(data)) + data + b"\x00" * (-len(data) % 4)


def instance_key_xdr(contract_id: str) -> bytes:
    """XDR of ``state.instance_key(contract_id)``."""
    return _CONTRACT_DATA + sc_address_xdr(contract_id) + _INSTANCE_KEY_TAIL


def contract_code_key_xdr(wasm_hash: bytes) -> bytes:
    """XDR of the ``LedgerKey`` of a contract's Wasm code entry."""
    return _U32(stellar_xdr.LedgerEntryType.CONTRACT_CODE.value) + wasm_hash


def soroban_transaction_data_xdr(
    read_only: list[bytes], *, instructions: int, disk_read_bytes: int, write_bytes: int, resource_fee: int
) -> bytes:
    """XDR of a ``SorobanTransactionData`` (ext v0) with a read-only footprint of encoded keys."""
    return b"".join(
        (
            _U32(0),  # ext v0
            _U32(len(read_only)),
            *read_only,
            _U32(0),  # no read-write keys: the invocations are read-only
            _U32(instructions),
            _U32(disk_read_bytes),
            _U32(write_bytes),
            _I64(resource_fee),
        )
    )


def _xdr(value: stellar_xdr.SCVal) -> bytes:
    return value.to_xdr_bytes()


_ESCROW_FIELDS: Final[dict[str, Callable[[state.EscrowSpec], bytes]]] = {
    "admin": lambda s: sc_val_address(s.admin),
    "amount": lambda s: sc_val_i128(s.amount),
    "funded_amount": lambda s: sc_val_i128(s.funded_amount),
    "funding_target": lambda s: sc_val_i128(s.funding_target),
    "invoice_id": lambda s: sc_val_symbol(s.invoice_id),
    "maturity": lambda s: _SCV_U64 + _U64(s.maturity),
    "sme_address": lambda s: sc_val_address(s.sme_address),
    "status": lambda s: _SCV_U32 + _U32(s.status),
    "yield_bps": lambda s: _SCV_I64 + _I64(s.yield_bps),
}


@functools.cache
def _escrow_struct_layout(extra_fields: bool) -> tuple[tuple[bytes, str | None, bytes], ...]:
    """(field key XDR, field name to compute or None, constant value XDR), in struct order."""
    fields = dict.fromkeys(_ESCROW_FIELDS, "")
    if extra_fields:
        fields.update(dict.fromkeys(state.ESCROW_EXTRA_FIELDS, ""))
    layout = []
    for name in sorted(fields):
        constant = b"" if name in _ESCROW_FIELDS else _xdr(state.ESCROW_EXTRA_FIELDS[name])
        layout.append((sc_val_symbol(name), name if name in _ESCROW_FIELDS else None, constant))
    return tuple(layout)


def escrow_struct_xdr(spec: state.EscrowSpec) -> bytes:
    """XDR of ``state.escrow_struct(spec)``: the ScVal ``get_escrow`` returns."""
    layout = _escrow_struct_layout(spec.storage_shape == "escrow_extra_fields")
    parts = [_SCV_MAP_PRESENT, _U32(len(layout))]
    for key, name, constant in layout:
        parts.append(key)
        parts.append(_ESCROW_FIELDS[name](spec) if name is not None else constant)
    return b"".join(parts)


_STORAGE_SLOTS: Final[dict[bytes, Callable[[state.EscrowSpec], bytes]]] = {
    _xdr(state.storage_key("Escrow")): escrow_struct_xdr,
    _xdr(state.storage_key("FundingToken")): lambda s: sc_val_address(s.funding_token),
    _xdr(state.storage_key("DistributedPrincipal")): lambda s: sc_val_i128(s.distributed_principal or 0),
    _xdr(state.storage_key("Admin")): lambda s: sc_val_address(s.admin),
}
_PLACEHOLDER: Final = state.StrKey.encode_contract(bytes(32))


@functools.cache
def _storage_layout(
    shape: str, has_escrow: bool, has_distributed: bool, custodial: bool
) -> tuple[tuple[bytes, Callable[[state.EscrowSpec], bytes] | None, bytes], ...]:
    """The storage map's entries in key order, learnt from stellar-sdk's encoding of a placeholder."""
    placeholder = state.EscrowSpec(
        contract_id=_PLACEHOLDER,
        invoice_id="X",
        funded_amount=0,
        amount=0,
        funding_target=0,
        funding_token=_PLACEHOLDER,
        admin=_PLACEHOLDER,
        sme_address=_PLACEHOLDER,
        distributed_principal=0 if has_distributed else None,
        has_escrow=has_escrow,
        storage_shape=shape,
        custodial=custodial,
    )
    storage = state.escrow_storage(placeholder).map
    assert storage is not None
    layout = []
    for entry in storage.sc_map:
        key = _xdr(entry.key)
        slot = _STORAGE_SLOTS.get(key)
        layout.append((key, slot, b"" if slot is not None else _xdr(entry.val)))
    return tuple(layout)


def escrow_entry_xdr(spec: state.EscrowSpec) -> bytes:
    """XDR of ``state.escrow_instance_entry(spec)`` (a ``LedgerEntryData``)."""
    layout = _storage_layout(
        spec.storage_shape, spec.has_escrow, spec.distributed_principal is not None, spec.custodial
    )
    parts = [
        _CONTRACT_DATA,
        _EXT_V0,
        sc_address_xdr(spec.contract_id),
        _INSTANCE_KEY_TAIL,
        _WASM_INSTANCE_HEADS[state.escrow_wasm_hash(spec)],
        _U32(len(layout)),
    ]
    for key, slot, constant in layout:
        parts.append(key)
        parts.append(slot(spec) if slot is not None else constant)
    return b"".join(parts)


_PERSISTENT: Final = _U32(stellar_xdr.ContractDataDurability.PERSISTENT.value)
_BALANCE_KEY_HEAD: Final = (
    _U32(stellar_xdr.SCValType.SCV_VEC.value) + _U32(1) + _U32(2) + sc_val_symbol("Balance")
)
_BALANCE_VALUE_HEAD: Final = _SCV_MAP_PRESENT + _U32(3) + sc_val_symbol("amount")
_BALANCE_VALUE_TAIL: Final = (
    sc_val_symbol("authorized")
    + _U32(stellar_xdr.SCValType.SCV_BOOL.value)
    + _U32(1)
    + sc_val_symbol("clawback")
    + _U32(stellar_xdr.SCValType.SCV_BOOL.value)
    + _U32(0)
)


def balance_key_xdr(token: str, holder: str) -> bytes:
    """XDR of ``state.balance_key(token, holder)``."""
    return _CONTRACT_DATA + _balance_key_body(token, holder)


def _balance_key_body(token: str, holder: str) -> bytes:
    return sc_address_xdr(token) + _BALANCE_KEY_HEAD + sc_val_address(holder) + _PERSISTENT


def balance_entry_xdr(token: str, holder: str, amount: int) -> bytes:
    """XDR of ``state.balance_entry(token, holder, amount)``."""
    return b"".join(
        (
            _CONTRACT_DATA,
            _EXT_V0,
            _balance_key_body(token, holder),
            _BALANCE_VALUE_HEAD,
            sc_val_i128(amount),
            _BALANCE_VALUE_TAIL,
        )
    )


def token_entry_xdr(spec: state.TokenSpec) -> bytes:
    """Tokens are few, so stellar-sdk encodes them directly."""
    return state.token_instance_entry(spec).to_xdr_bytes()


__all__ = [
    "balance_entry_xdr",
    "balance_key_xdr",
    "contract_code_key_xdr",
    "escrow_entry_xdr",
    "escrow_struct_xdr",
    "instance_key_xdr",
    "sc_address_xdr",
    "soroban_transaction_data_xdr",
    "token_entry_xdr",
]
