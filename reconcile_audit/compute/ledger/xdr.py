"""XDR for the ledger reader: contract-instance keys and the fields read from instance entries.

Two paths with one meaning. stellar-sdk's generated XDR classes are the oracle (``*_sdk``): they
accept every valid entry and explain every invalid one. They are pure Python and cost about
40 µs per key and 170 µs or more per escrow entry, which would bound a 100k sweep on loopback.
So the reader first takes a fast path: instance keys from their fixed byte layout (about 2 µs),
and for entries, a template learnt from the layout of entries already decoded (about 3 µs), else
a small ``struct`` walker over the entry bytes that reads only what the reader needs (about
15 µs). The walker knows a subset of ``SCVal``; whenever it meets anything else, or anything
malformed, it returns ``None`` and the SDK path decides, so a fast-path gap can cost time but
never change a result. tests/compute/test_ledger_xdr.py checks all paths agree with stellar-sdk over every
storage shape, generated values and corrupted entries.

The base64 of a whole answer is decoded in one vectorised polars call (:func:`decode_base64_series`),
kept only where it re-encodes to the very text, else decoded by binascii: tested against it.

The sweep decodes most escrow entries faster still, a read at a time as columns
(:mod:`reconcile_audit.compute.ledger.columns`), from layouts learnt by the same
:func:`escrow_layout` the regex templates compile from; what those decline comes here.
"""

from __future__ import annotations

import binascii
import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Final, NamedTuple

import polars as pl
from stellar_sdk import Address, scval
from stellar_sdk import xdr as sx

from reconcile_audit.compute.strkey import contract_hash, contract_id_of

# LedgerKey{CONTRACT_DATA(6), SCAddress{CONTRACT(1), hash}, SCVal{LEDGER_KEY_CONTRACT_INSTANCE(20)},
# PERSISTENT(1)}: 48 bytes, only the 32-byte contract hash varies.
KEY_PREFIX: Final = struct.pack(">II", 6, 1)
KEY_SUFFIX: Final = struct.pack(">II", 20, 1)
_MAX_DEPTH: Final = 64

ESCROW_FIELDS: Final = ("invoice_id", "funded_amount", "amount", "funding_target", "status")
_ESCROW_NAMES: Final = frozenset({"Escrow", "FundingToken", "DistributedPrincipal", "ProtocolFeeBps"})
_METADATA: Final = "Symbol:METADATA"
_NO_METADATA: Final = "no METADATA in the token's instance storage"


class EntryDecodeError(ValueError):
    """An entry the reader cannot use; the message is the cause shown on the contract's row."""


# NamedTuples rather than frozen dataclasses: equally immutable, and about 3x cheaper to build,
# which counts when 100k of them are made per sweep.
class EscrowFields(NamedTuple):
    """The ``InvoiceEscrow`` fields the audit compares (amounts in token base units)."""

    invoice_id: str
    funded_amount: int
    amount: int
    funding_target: int
    status: int


class EscrowInstance(NamedTuple):
    """What one escrow contract instance entry says. ``escrow`` is None when storage has no Escrow."""

    contract_hash: bytes
    escrow: EscrowFields | None
    funding_token: str | None
    distributed_principal: int | None
    # Custody: the instance's Wasm hash, and whether its storage holds ProtocolFeeBps (which code
    # from 2026-06-29 on, the first to move tokens into the escrow, always stores).
    wasm_hash: bytes | None = None
    protocol_fee: bool = False


class TokenInstance(NamedTuple):
    """A token contract instance: ``decimals`` from SAC ``METADATA``, or ``problem`` saying why not;
    ``symbol`` from the same map, to name the token to people (None when absent)."""

    contract_hash: bytes
    decimals: int | None
    problem: str | None
    symbol: str | None = None
    stellar_asset: bool = True  # its executable is the Stellar Asset Contract, not a Wasm hash


class TokenBalance(NamedTuple):
    """A Stellar Asset Contract's ``BalanceValue`` for one holder: what the escrow holds."""

    amount: int
    authorized: bool
    clawback: bool


# --- contract ids and keys -------------------------------------------------------------------


def instance_key(contract_id: str) -> str:
    """Base64 ``LedgerKey`` of a contract's instance entry, from the fixed layout."""
    return instance_key_of_hash(contract_hash(contract_id))


def instance_key_of_hash(raw_hash: bytes) -> str:
    return binascii.b2a_base64(KEY_PREFIX + raw_hash + KEY_SUFFIX, newline=False).decode("ascii")


# ContractData{contract: token, key: Vec[Symbol("Balance"), Address(contract holder)], PERSISTENT}.
_BALANCE_KEY_HEAD: Final = b"\x00\x00\x00\x06\x00\x00\x00\x01"  # CONTRACT_DATA, SCAddress CONTRACT
_BALANCE_KEY_MIDDLE: Final = (
    b"\x00\x00\x00\x10\x00\x00\x00\x01\x00\x00\x00\x02"  # SCV_VEC, present, 2 elements
    b"\x00\x00\x00\x0f\x00\x00\x00\x07Balance\x00"  # Symbol("Balance")
    b"\x00\x00\x00\x12\x00\x00\x00\x01"  # SCV_ADDRESS, SCAddress CONTRACT
)
_BALANCE_KEY_TAIL: Final = b"\x00\x00\x00\x01"  # PERSISTENT


def balance_key_of_hashes(token_hash: bytes, holder_hash: bytes) -> str:
    """Base64 ``LedgerKey`` of the SAC ``token``'s balance entry of the contract ``holder``."""
    raw = _BALANCE_KEY_HEAD + token_hash + _BALANCE_KEY_MIDDLE + holder_hash + _BALANCE_KEY_TAIL
    return binascii.b2a_base64(raw, newline=False).decode("ascii")


def balance_key_sdk(token: str, holder: str) -> str:
    """The oracle of :func:`balance_key_of_hashes`, built with stellar-sdk."""
    key = sx.LedgerKey(
        type=sx.LedgerEntryType.CONTRACT_DATA,
        contract_data=sx.LedgerKeyContractData(
            contract=Address(token).to_xdr_sc_address(),
            key=scval.to_vec([scval.to_symbol("Balance"), scval.to_address(holder)]),
            durability=sx.ContractDataDurability.PERSISTENT,
        ),
    )
    return key.to_xdr()


# The BalanceValue map a SAC stores, {amount: i128, authorized: bool, clawback: bool} in key
# order, has one size: its fixed bytes around three holes (16 amount bytes, and the last byte of
# each bool). Compared as slices, with no regex: a balance entry is half of a custodial sweep.
_BALANCE_VALUE_HEAD: Final = b"\x00\x00\x00\x11\x00\x00\x00\x01\x00\x00\x00\x03\x00\x00\x00\x0f\x00\x00\x00\x06amount\x00\x00\x00\x00\x00\x0a"
_BALANCE_VALUE_MIDDLE: Final = (
    b"\x00\x00\x00\x0f\x00\x00\x00\x0aauthorized\x00\x00\x00\x00\x00\x00\x00\x00\x00"
)
_BALANCE_VALUE_TAIL: Final = b"\x00\x00\x00\x0f\x00\x00\x00\x08clawback\x00\x00\x00\x00\x00\x00\x00"
_BALANCE_VALUE_SIZE: Final = (
    len(_BALANCE_VALUE_HEAD) + 16 + len(_BALANCE_VALUE_MIDDLE) + 1 + len(_BALANCE_VALUE_TAIL) + 1
)
_BOOL: Final = {0: False, 1: True}


def decode_balance_fast(buf: bytes) -> TokenBalance | None:
    """A SAC balance entry read from its fixed layout; None for anything else (the SDK decides)."""
    # LedgerEntryData CONTRACT_DATA, ext v0, then the key as in balance_key_of_hashes, then the value.
    if buf[:12] != b"\x00\x00\x00\x06\x00\x00\x00\x00\x00\x00\x00\x01":
        return None
    if buf[44 : 44 + len(_BALANCE_KEY_MIDDLE)] != _BALANCE_KEY_MIDDLE:
        return None
    tail_at = 44 + len(_BALANCE_KEY_MIDDLE) + 32
    at = tail_at + 4  # the value
    if buf[tail_at:at] != _BALANCE_KEY_TAIL or len(buf) != at + _BALANCE_VALUE_SIZE:
        return None
    amount_at = at + len(_BALANCE_VALUE_HEAD)
    authorized_at = amount_at + 16 + len(_BALANCE_VALUE_MIDDLE)
    clawback_at = authorized_at + 1 + len(_BALANCE_VALUE_TAIL)
    if (
        buf[at:amount_at] != _BALANCE_VALUE_HEAD
        or buf[amount_at + 16 : authorized_at] != _BALANCE_VALUE_MIDDLE
        or buf[authorized_at + 1 : clawback_at] != _BALANCE_VALUE_TAIL
    ):
        return None
    authorized = _BOOL.get(buf[authorized_at])
    clawback = _BOOL.get(buf[clawback_at])
    if authorized is None or clawback is None:
        return None
    amount = int.from_bytes(buf[amount_at : amount_at + 16], "big", signed=True)
    return new_tuple(TokenBalance, (amount, authorized, clawback))  # type: ignore[no-any-return]


def decode_balance_sdk(buf: bytes) -> TokenBalance:
    """The oracle: a SAC balance entry decoded with stellar-sdk; ``EntryDecodeError`` says why not."""
    entry = _contract_data_sdk(buf)
    key = entry.key
    if (
        key.type != sx.SCValType.SCV_VEC
        or key.vec is None
        or len(key.vec.sc_vec) != 2
        or key.vec.sc_vec[0].type != sx.SCValType.SCV_SYMBOL
        or key.vec.sc_vec[0].sym is None
        or key.vec.sc_vec[0].sym.sc_symbol != b"Balance"
    ):
        raise EntryDecodeError("entry key is not Vec[Symbol(Balance), Address]")
    if entry.durability != sx.ContractDataDurability.PERSISTENT:
        raise EntryDecodeError(f"balance durability is {entry.durability.name}, not PERSISTENT")
    fields = _struct_sdk(entry.val, "BalanceValue", ("amount", "authorized", "clawback"))
    amount = _field_sdk(fields, "BalanceValue", "amount", sx.SCValType.SCV_I128, _i128_sdk)
    authorized = _field_sdk(fields, "BalanceValue", "authorized", sx.SCValType.SCV_BOOL, scval.from_bool)
    clawback = _field_sdk(fields, "BalanceValue", "clawback", sx.SCValType.SCV_BOOL, scval.from_bool)
    return TokenBalance(amount, authorized, clawback)


def decode_balance_bytes(buf: bytes) -> TokenBalance:
    return decode_balance_fast(buf) or decode_balance_sdk(buf)


def instance_key_sdk(contract_id: str) -> str:
    key = sx.LedgerKey(
        type=sx.LedgerEntryType.CONTRACT_DATA,
        contract_data=sx.LedgerKeyContractData(
            contract=Address(contract_id).to_xdr_sc_address(),
            key=sx.SCVal(sx.SCValType.SCV_LEDGER_KEY_CONTRACT_INSTANCE),
            durability=sx.ContractDataDurability.PERSISTENT,
        ),
    )
    return key.to_xdr()


# Every key the reader builds (a contract's instance, a token's balance of a holder) names the
# contract that owns its entry right after LedgerEntryType and the SCAddress type (tested for both).
_OWNER_AT: Final = len(KEY_PREFIX)


def key_owner(key_b64: str) -> bytes:
    """The contract hash the entry of a key the reader built must belong to."""
    return binascii.a2b_base64(key_b64)[_OWNER_AT : _OWNER_AT + 32]


def key_owners(keys_b64: Sequence[str] | pl.Series) -> pl.Series:
    """:func:`key_owner` of many keys, in one polars call."""
    return pl.Series(keys_b64, dtype=pl.String).str.decode("base64").bin.slice(_OWNER_AT, 32)


def key_contract_hash(key_b64: str) -> bytes | None:
    """The contract hash of an instance key, or None if ``key_b64`` is not one."""
    try:
        raw = binascii.a2b_base64(key_b64, strict_mode=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) != 48 or raw[:8] != KEY_PREFIX or raw[40:] != KEY_SUFFIX:
        return None
    return raw[8:40]


# --- the fast walker -------------------------------------------------------------------------
#
# It skips what it does not need without building values, and recognises the keys it needs by
# their exact encoded bytes: once the skipper has checked that every padding byte is zero, XDR is
# canonical, so byte equality of two encoded keys is equality of the keys.

_u32 = struct.Struct(">I").unpack_from
_i128 = struct.Struct(">qQ").unpack_from
_ZERO_PAD: Final = (b"", b"\x00\x00\x00", b"\x00\x00", b"\x00")  # indexed by n % 4
# Byte sizes of fixed-size SCVal bodies: bool, void, u32, i32, u64, i64, timepoint, duration,
# u128, i128, u256, i256, ledger-key-contract-instance.
_FIXED_SIZE: Final = {0: 4, 1: 0, 3: 4, 4: 4, 5: 8, 6: 8, 7: 8, 8: 8, 9: 16, 10: 16, 11: 32, 12: 32, 20: 0}
_SYM, _VEC, _MAP, _ADDR, _I128, _U32 = 15, 16, 17, 18, 10, 3


class _Unrecognised(Exception):
    """The fast walker met something it does not handle; the SDK path decides."""


def _skip(buf: bytes, pos: int, depth: int) -> int:
    """The position after the SCVal at ``pos``."""
    if depth <= 0:
        raise _Unrecognised
    (tag,) = _u32(buf, pos)
    pos += 4
    size = _FIXED_SIZE.get(tag)
    if size is not None:
        if tag == 0 and _u32(buf, pos)[0] > 1:
            raise _Unrecognised
        return pos + size
    if tag == _SYM or tag == 13 or tag == 14:  # symbol, bytes, string
        (n,) = _u32(buf, pos)
        end = pos + 4 + n
        if (tag == _SYM and n > 32) or buf[end : end + (-n % 4)] != _ZERO_PAD[n % 4]:
            raise _Unrecognised
        return end + (-n % 4)
    if tag == _ADDR:
        (kind,) = _u32(buf, pos)
        if kind == 1:  # contract: Hash
            return pos + 36
        if kind == 0 and _u32(buf, pos + 4)[0] == 0:  # account: PublicKey{ED25519, uint256}
            return pos + 40
        raise _Unrecognised
    if tag == _VEC or tag == _MAP:
        (present,) = _u32(buf, pos)
        pos += 4
        if present == 0:
            return pos
        if present != 1:
            raise _Unrecognised
        (count,) = _u32(buf, pos)
        pos += 4
        if count * 4 > len(buf) - pos:
            raise _Unrecognised
        depth -= 1
        for _ in range(count if tag == _VEC else 2 * count):
            pos = _skip(buf, pos, depth)
        return pos
    raise _Unrecognised  # error, instance, nonce, executable tag...: rare, left to the SDK


def _encoded(val: sx.SCVal) -> bytes:
    return val.to_xdr_bytes()


def _unit_key(name: str) -> bytes:
    """``Vec[Symbol(name)]``: a unit variant of a contract's ``DataKey`` enum, as a storage key."""
    return _encoded(
        sx.SCVal(
            sx.SCValType.SCV_VEC,
            vec=sx.SCVec([sx.SCVal(sx.SCValType.SCV_SYMBOL, sym=sx.SCSymbol(name.encode()))]),
        )
    )


def _symbol(name: str) -> bytes:
    return _encoded(sx.SCVal(sx.SCValType.SCV_SYMBOL, sym=sx.SCSymbol(name.encode())))


_ESCROW_KEY, _TOKEN_KEY, _PRINCIPAL_KEY, _FEE_KEY = (
    _unit_key("Escrow"),
    _unit_key("FundingToken"),
    _unit_key("DistributedPrincipal"),
    _unit_key("ProtocolFeeBps"),
)
_METADATA_KEY, _DECIMAL_FIELD, _SYMBOL_FIELD = _symbol("METADATA"), _symbol("decimal"), _symbol("symbol")
_STRING: Final = 14
_MAX_SYMBOL_BYTES: Final = 32  # a name for people; longer text is no symbol a person reads
_ESCROW_FIELD_KEYS: Final = {_symbol(name): name for name in ESCROW_FIELDS}
_ESCROW_FIELD_TAGS: Final = {
    "invoice_id": _SYM,
    "funded_amount": _I128,
    "amount": _I128,
    "funding_target": _I128,
    "status": _U32,
}


def _instance_storage(buf: bytes) -> tuple[bytes, int, int]:
    """(contract hash, position of the first storage entry, entry count) of an instance entry."""
    # LedgerEntryData{CONTRACT_DATA(6)}, ContractDataEntry{ext 0, SCAddress{CONTRACT(1), hash},
    # key SCV_LEDGER_KEY_CONTRACT_INSTANCE(20), PERSISTENT(1), val SCV_CONTRACT_INSTANCE(19)}
    if buf[:12] != b"\x00\x00\x00\x06\x00\x00\x00\x00\x00\x00\x00\x01" or len(buf) < 64:
        raise _Unrecognised
    if buf[44:56] != b"\x00\x00\x00\x14\x00\x00\x00\x01\x00\x00\x00\x13":
        raise _Unrecognised
    (executable,) = _u32(buf, 56)
    pos = 60
    if executable == 0:  # WASM: Hash
        pos += 32
    elif executable != 1:  # 1 = Stellar Asset Contract: void
        raise _Unrecognised
    (present,) = _u32(buf, pos)
    if present == 0:
        return buf[12:44], pos + 4, 0
    if present != 1:
        raise _Unrecognised
    (count,) = _u32(buf, pos + 4)
    return buf[12:44], pos + 8, count


def _wasm_hash(buf: bytes) -> bytes | None:
    """The Wasm hash of an instance entry ``_instance_storage`` accepted; None for a Stellar Asset Contract."""
    return buf[60:92] if _u32(buf, 56)[0] == 0 else None


def _struct_fields(buf: bytes, pos: int, wanted: dict[bytes, str]) -> tuple[dict[str, tuple[int, int]], int]:
    """{field: (tag, position of its body)} of the wanted fields of the struct at ``pos``, and its end."""
    if buf[pos : pos + 8] != b"\x00\x00\x00\x11\x00\x00\x00\x01":  # SCV_MAP, present
        raise _Unrecognised
    (count,) = _u32(buf, pos + 8)
    pos += 12
    found: dict[str, tuple[int, int]] = {}
    for _ in range(count):
        if _u32(buf, pos)[0] != _SYM:  # a struct's field names are symbols
            raise _Unrecognised
        end = _skip(buf, pos, 2)
        name = wanted.get(buf[pos:end])
        if name is not None:
            if name in found:
                raise _Unrecognised
            found[name] = (_u32(buf, end)[0], end + 4)
        pos = _skip(buf, end, _MAX_DEPTH)
    return found, pos


def _i128_at(buf: bytes, pos: int) -> int:
    hi, lo = _i128(buf, pos)
    return (hi << 64) | lo


def _escrow_at(buf: bytes, pos: int) -> tuple[EscrowFields, int]:
    fields, end = _struct_fields(buf, pos, _ESCROW_FIELD_KEYS)
    if len(fields) != len(ESCROW_FIELDS):
        raise _Unrecognised
    for name, (tag, _) in fields.items():
        if tag != _ESCROW_FIELD_TAGS[name]:
            raise _Unrecognised
    at = fields["invoice_id"][1]
    (n,) = _u32(buf, at)
    if n > 32:
        raise _Unrecognised
    escrow = EscrowFields(
        invoice_id=buf[at + 4 : at + 4 + n].decode("ascii"),
        funded_amount=_i128_at(buf, fields["funded_amount"][1]),
        amount=_i128_at(buf, fields["amount"][1]),
        funding_target=_i128_at(buf, fields["funding_target"][1]),
        status=_u32(buf, fields["status"][1])[0],
    )
    return escrow, end


def decode_escrow_walk(buf: bytes) -> EscrowInstance | None:
    """The walker; None when it does not recognise ``buf`` (including every invalid entry)."""
    try:
        raw_hash, pos, count = _instance_storage(buf)
        escrow = token = principal = None
        seen: set[bytes] = set()
        protocol_fee = False
        for _ in range(count):
            end = _skip(buf, pos, _MAX_DEPTH)
            key = buf[pos:end]
            if key == _FEE_KEY:
                protocol_fee = True
            if key == _ESCROW_KEY or key == _TOKEN_KEY or key == _PRINCIPAL_KEY:
                if key in seen:
                    raise _Unrecognised
                seen.add(key)
                (tag,) = _u32(buf, end)
                if key == _ESCROW_KEY:
                    escrow, pos = _escrow_at(buf, end)
                    continue
                if key == _TOKEN_KEY:
                    if tag != _ADDR or _u32(buf, end + 4)[0] != 1:
                        raise _Unrecognised
                    token = contract_id_of(buf[end + 8 : end + 40])
                elif tag != _I128:
                    raise _Unrecognised
                else:
                    principal = _i128_at(buf, end + 4)
            pos = _skip(buf, end, _MAX_DEPTH)
        if pos != len(buf):
            raise _Unrecognised
        return EscrowInstance(raw_hash, escrow, token, principal, _wasm_hash(buf), protocol_fee)
    except (_Unrecognised, struct.error, UnicodeDecodeError, IndexError):
        return None


# --- learned templates: the fastest path for the common case ---------------------------------
#
# Escrows of one contract version store the same keys in the same order with values of the same
# types, so their entries differ only in the bytes of those values. After the walker decodes an
# entry, it compiles the entry's layout into a bytes regex: every key, tag and length is literal,
# fixed-size values are wildcards of their size (captured when wanted), and any other value is
# literal. A later entry that ``fullmatch``es the regex has exactly that layout, so its fields are
# read from the match groups in C, without walking. Anything else goes to the walker as before.

_MAX_TEMPLATES: Final = 16


# The groups a template reads, in this order; an absent one (say, no DistributedPrincipal in this
# layout) is read as the None appended after the match's groups.
_TEMPLATE_GROUPS: Final = (
    "hash",
    "id_len",
    "invoice_id",
    "id_pad",
    "funded_amount",
    "amount",
    "funding_target",
    "status",
    "token",
    "principal",
    "wasm",
)


@dataclass(frozen=True, slots=True)
class _Template:
    """A compiled layout, and ``pick``: ``(*match.groups(), None)`` -> the values of _TEMPLATE_GROUPS."""

    pattern: re.Pattern[bytes]
    pick: Callable[[tuple[Any, ...]], tuple[Any, ...]]
    protocol_fee: bool  # the layout holds ProtocolFeeBps: the same for every entry it matches

    @classmethod
    def of(cls, pattern: re.Pattern[bytes], protocol_fee: bool) -> _Template:
        # groupindex numbers from 1; -1 picks the appended None.
        pick = itemgetter(*(pattern.groupindex.get(name, 0) - 1 for name in _TEMPLATE_GROUPS))
        return cls(pattern, pick, protocol_fee)


_templates: list[_Template] = []


class Part(NamedTuple):
    """A run of bytes in a learnt escrow layout: ``literal`` when every entry of the layout has
    these very bytes there; else a value of ``size`` bytes, ``name`` being the field it holds
    (one of _TEMPLATE_GROUPS) or None for a value the reader skips. The ``invoice_id`` part
    covers the symbol's length word, its bytes and their padding."""

    size: int
    literal: bytes | None = None
    name: str | None = None

    @classmethod
    def fixed(cls, buf: bytes, start: int, end: int) -> Part:
        return cls(end - start, buf[start:end])


def _value_parts(buf: bytes, pos: int) -> tuple[list[Part], int]:
    """Parts of a value the reader does not need: fixed-size bodies are values, the rest literal."""
    end = _skip(buf, pos, _MAX_DEPTH)
    (tag,) = _u32(buf, pos)
    size = _FIXED_SIZE.get(tag)
    if size and tag != 0:  # a bool stays literal: only 0 and 1 are valid
        return [Part.fixed(buf, pos, pos + 4), Part(size)], end
    if tag == _ADDR:
        return [Part.fixed(buf, pos, end - 32), Part(32)], end
    return [Part.fixed(buf, pos, end)], end


def _escrow_parts(buf: bytes, pos: int) -> tuple[list[Part], int]:
    parts = [Part.fixed(buf, pos, pos + 12)]  # SCV_MAP, present, field count
    (count,) = _u32(buf, pos + 8)
    pos += 12
    for _ in range(count):
        end = _skip(buf, pos, 2)
        name = _ESCROW_FIELD_KEYS.get(buf[pos:end])
        parts.append(Part.fixed(buf, pos, end))
        if name is None:
            values, pos = _value_parts(buf, end)
            parts += values
            continue
        pos = _skip(buf, end, 2)
        parts.append(Part.fixed(buf, end, end + 4))  # the field's tag
        parts.append(Part(pos - end - 4, name=name))
    return parts, pos


def escrow_layout(buf: bytes) -> tuple[list[Part], bool] | None:
    """The layout of an escrow entry the walker has decoded (its parts, and whether it holds
    ProtocolFeeBps); None if it does not suit one."""
    try:
        _, pos, count = _instance_storage(buf)
        if count == 0:
            return None
        parts = [Part.fixed(buf, 0, 12), Part(32, name="hash"), Part.fixed(buf, 44, 60)]
        if _u32(buf, 56)[0] == 0:
            parts.append(Part(32, name="wasm"))  # the Wasm hash: any version of the code
        parts.append(Part.fixed(buf, pos - 8, pos))  # storage present, entry count
        found = set()
        for _ in range(count):
            end = _skip(buf, pos, _MAX_DEPTH)
            key = buf[pos:end]
            parts.append(Part.fixed(buf, pos, end))
            if key == _ESCROW_KEY:
                values, pos = _escrow_parts(buf, end)
            elif key == _TOKEN_KEY:
                values, pos = [Part.fixed(buf, end, end + 8), Part(32, name="token")], end + 40
            elif key == _PRINCIPAL_KEY:
                values, pos = [Part.fixed(buf, end, end + 4), Part(16, name="principal")], end + 20
            else:
                values, pos = _value_parts(buf, end)
            found.add(key)
            parts += values
    except (_Unrecognised, struct.error):
        return None
    if _ESCROW_KEY in found and not any(part.name == "invoice_id" for part in parts):
        return None
    return parts, _FEE_KEY in found


# A symbol of 1 to 32 of the characters Soroban allows, with its length word and zero padding.
_INVOICE_ID_PATTERN: Final = (
    rb"(?P<id_len>\x00\x00\x00[\x01-\x20])(?P<invoice_id>[A-Za-z0-9_]{1,32})(?P<id_pad>\x00{0,3})"
)


def _pattern_of(part: Part) -> bytes:
    if part.literal is not None:
        return re.escape(part.literal)
    if part.name == "invoice_id":
        return _INVOICE_ID_PATTERN
    if part.name is None:
        return b".{%d}" % part.size
    return b"(?P<%s>.{%d})" % (part.name.encode(), part.size)


def _learn_escrow_template(buf: bytes) -> _Template | None:
    """The template of an entry the walker has just decoded; None if its layout does not suit one."""
    layout = escrow_layout(buf)
    if layout is None:
        return None
    parts, protocol_fee = layout
    try:
        compiled = re.compile(b"".join(_pattern_of(part) for part in parts), re.DOTALL)
    except re.error:
        return None
    return _Template.of(compiled, protocol_fee)


def _decode_by_template(buf: bytes) -> EscrowInstance | None:
    for template in _templates:
        match = template.pattern.fullmatch(buf)
        if match is None:
            continue
        # One groups() and one C itemgetter: cheaper than a lookup per field by name or number.
        raw_hash, id_len, invoice_id, id_pad, funded, amount, target, status, token, principal, wasm = (
            template.pick((*match.groups(), None))
        )
        escrow = None
        if invoice_id is not None:  # every group of a template is mandatory: None means absent
            if len(invoice_id) != id_len[3] or len(id_pad) != -len(invoice_id) % 4:
                return None
            escrow = new_tuple(
                EscrowFields,
                (
                    invoice_id.decode("ascii"),
                    _from_bytes(funded, "big", signed=True),
                    _from_bytes(amount, "big", signed=True),
                    _from_bytes(target, "big", signed=True),
                    _from_bytes(status, "big"),
                ),
            )
        return new_tuple(
            EscrowInstance,
            (
                raw_hash,
                escrow,
                None if token is None else contract_id_of(token),
                None if principal is None else _from_bytes(principal, "big", signed=True),
                wasm,
                template.protocol_fee,
            ),
        )
    return None


_from_bytes: Final = int.from_bytes
# A NamedTuple's generated __new__ is a Python function; building the tuple directly halves the
# cost (the callers pass every field). The batched reader builds its results with it too.
new_tuple: Final = tuple.__new__


def decode_escrow_fast(buf: bytes) -> EscrowInstance | None:
    """The fast path (a learned template, else the walker); None when it does not recognise ``buf``."""
    return _decode_by_template(buf) or _walk_and_learn(buf)


def _walk_and_learn(buf: bytes) -> EscrowInstance | None:
    found = decode_escrow_walk(buf)
    if found is not None and len(_templates) < _MAX_TEMPLATES:
        template = _learn_escrow_template(buf)
        if template is not None:
            _templates.append(template)
    return found


def decode_token_fast(buf: bytes) -> TokenInstance | None:
    try:
        raw_hash, pos, count = _instance_storage(buf)
        decimals: int | None = None
        symbol: str | None = None
        seen = False
        for _ in range(count):
            end = _skip(buf, pos, _MAX_DEPTH)
            if buf[pos:end] == _METADATA_KEY:
                if seen:
                    raise _Unrecognised
                seen = True
                fields, pos = _struct_fields(buf, end, {_DECIMAL_FIELD: "decimal", _SYMBOL_FIELD: "symbol"})
                found = fields.get("decimal")
                if found is None or found[0] != _U32:
                    raise _Unrecognised  # the SDK path words the problem
                decimals = _u32(buf, found[1])[0]
                named = fields.get("symbol")
                if named is not None:
                    if named[0] != _STRING:
                        raise _Unrecognised
                    (n,) = _u32(buf, named[1])
                    symbol = symbol_text(buf[named[1] + 4 : named[1] + 4 + n])
                continue
            pos = _skip(buf, end, _MAX_DEPTH)
        if pos != len(buf):
            raise _Unrecognised
        asset = _wasm_hash(buf) is None
        if not seen:
            return TokenInstance(raw_hash, None, _NO_METADATA, stellar_asset=asset)
        return TokenInstance(raw_hash, decimals, None, symbol, asset)
    except (_Unrecognised, struct.error, UnicodeDecodeError, IndexError):
        return None


def symbol_text(raw: bytes) -> str | None:
    """A token's METADATA symbol as text for people, or None when it is not short printable text."""
    text = raw.decode("utf-8", errors="replace")
    if len(raw) > _MAX_SYMBOL_BYTES or not text.isprintable() or not text.strip():
        return None
    return text


# --- the SDK path: the oracle, and the fallback for whatever the walker leaves ----------------


def _contract_data_sdk(buf: bytes) -> sx.ContractDataEntry:
    """The ContractData entry in ``buf``, decoded with stellar-sdk; ``EntryDecodeError`` otherwise."""
    try:
        data = sx.LedgerEntryData.from_xdr_bytes(buf)
    except Exception as exc:  # the generated decoder raises ValueError, EOFError, struct.error...
        raise EntryDecodeError(f"undecodable LedgerEntryData XDR ({type(exc).__name__}: {exc})") from exc
    if data.type != sx.LedgerEntryType.CONTRACT_DATA or data.contract_data is None:
        raise EntryDecodeError(f"entry is {data.type.name}, not CONTRACT_DATA")
    return data.contract_data


def _instance_storage_sdk(buf: bytes) -> tuple[bytes, list[sx.SCMapEntry], bytes | None]:
    """(contract hash, storage entries, Wasm hash or None for a Stellar Asset Contract)."""
    entry = _contract_data_sdk(buf)
    address = entry.contract
    if address.type != sx.SCAddressType.SC_ADDRESS_TYPE_CONTRACT or address.contract_id is None:
        raise EntryDecodeError(f"entry's owner is {address.type.name}, not a contract")
    if entry.key.type != sx.SCValType.SCV_LEDGER_KEY_CONTRACT_INSTANCE:
        raise EntryDecodeError(f"entry key is {entry.key.type.name}, not the contract instance")
    if entry.durability != sx.ContractDataDurability.PERSISTENT:
        raise EntryDecodeError(f"entry durability is {entry.durability.name}, not PERSISTENT")
    if entry.val.type != sx.SCValType.SCV_CONTRACT_INSTANCE or entry.val.instance is None:
        raise EntryDecodeError(f"entry value is {entry.val.type.name}, not a contract instance")
    storage = entry.val.instance.storage
    executable = entry.val.instance.executable
    wasm_hash = executable.wasm_hash.hash if executable.wasm_hash is not None else None
    return address.contract_id.contract_id.hash, list(storage.sc_map) if storage else [], wasm_hash


def _key_name_sdk(key: sx.SCVal) -> str | None:
    """``Vec[Symbol(x)]`` -> ``x`` (a unit variant of the contract's ``DataKey`` enum, as the escrow
    stores Escrow, FundingToken...); a bare ``Symbol(x)`` -> ``Symbol:x`` (as a Stellar Asset
    Contract stores METADATA). Kept apart because storage may hold both ``Symbol("Escrow")`` and
    ``Vec[Symbol("Escrow")]``, and only the latter is the escrow."""
    if key.type == sx.SCValType.SCV_SYMBOL and key.sym is not None:
        return "Symbol:" + _name_text(key.sym.sc_symbol)
    if key.type == sx.SCValType.SCV_VEC and key.vec is not None and len(key.vec.sc_vec) == 1:
        first = key.vec.sc_vec[0]
        if first.type == sx.SCValType.SCV_SYMBOL and first.sym is not None:
            return _name_text(first.sym.sc_symbol)
    return None


def _name_text(raw: bytes) -> str:
    # Lossless and never failing: a name that is not ASCII is simply not one the reader looks for.
    return raw.decode("latin-1")


def _symbol_text(raw: bytes) -> str:
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError as exc:
        raise EntryDecodeError(f"symbol {raw!r} is not ASCII") from exc


def _named_sdk(items: list[sx.SCMapEntry], wanted: frozenset[str]) -> dict[str, sx.SCVal]:
    """The storage values under the ``wanted`` key names; a wanted key twice is ambiguous."""
    named: dict[str, sx.SCVal] = {}
    for item in items:
        name = _key_name_sdk(item.key)
        if name in wanted:
            if name in named:
                raise EntryDecodeError(f"instance storage holds the key {name} twice")
            named[name] = item.val
    return named


def _struct_sdk(val: sx.SCVal, what: str, wanted: tuple[str, ...]) -> dict[str, sx.SCVal]:
    if val.type != sx.SCValType.SCV_MAP or val.map is None:
        raise EntryDecodeError(f"{what} is {val.type.name}, not a struct (map)")
    fields: dict[str, sx.SCVal] = {}
    for item in val.map.sc_map:
        if item.key.type != sx.SCValType.SCV_SYMBOL or item.key.sym is None:
            raise EntryDecodeError(f"{what} has a {item.key.type.name} field name, not a symbol")
        name = _name_text(item.key.sym.sc_symbol)
        if name not in wanted:
            continue
        if name in fields:
            raise EntryDecodeError(f"{what} has the field {name} twice")
        fields[name] = item.val
    return fields


def _field_sdk(
    fields: dict[str, sx.SCVal], what: str, name: str, kind: sx.SCValType, read: Callable[[sx.SCVal], Any]
) -> Any:
    val = fields.get(name)
    if val is None:
        raise EntryDecodeError(f"{what} has no field {name}")
    if val.type != kind:
        raise EntryDecodeError(f"{what}.{name} is {val.type.name}, expected {kind.name}")
    return read(val)


def _i128_sdk(val: sx.SCVal) -> int:
    return scval.from_int128(val)


def escrow_fields_sdk(val: sx.SCVal) -> EscrowFields:
    """The ``InvoiceEscrow`` struct (as stored, or as ``get_escrow`` returns it) read with stellar-sdk."""
    what = "Escrow"
    fields = _struct_sdk(val, what, ESCROW_FIELDS)
    t = sx.SCValType
    return EscrowFields(
        invoice_id=_field_sdk(
            fields, what, "invoice_id", t.SCV_SYMBOL, lambda v: _symbol_text(v.sym.sc_symbol)
        ),
        funded_amount=_field_sdk(fields, what, "funded_amount", t.SCV_I128, _i128_sdk),
        amount=_field_sdk(fields, what, "amount", t.SCV_I128, _i128_sdk),
        funding_target=_field_sdk(fields, what, "funding_target", t.SCV_I128, _i128_sdk),
        status=_field_sdk(fields, what, "status", t.SCV_U32, scval.from_uint32),
    )


def decode_escrow_sdk(buf: bytes) -> EscrowInstance:
    """The oracle: decode with stellar-sdk; ``EntryDecodeError`` says what is wrong."""
    raw_hash, items, wasm_hash = _instance_storage_sdk(buf)
    named = _named_sdk(items, _ESCROW_NAMES)
    escrow = escrow_fields_sdk(named["Escrow"]) if "Escrow" in named else None
    token = None
    if "FundingToken" in named:
        val = named["FundingToken"]
        if val.type != sx.SCValType.SCV_ADDRESS or val.address is None:
            raise EntryDecodeError(f"FundingToken is {val.type.name}, not an address")
        if val.address.type != sx.SCAddressType.SC_ADDRESS_TYPE_CONTRACT:
            raise EntryDecodeError(f"FundingToken is a {val.address.type.name} address, not a contract")
        token = Address.from_xdr_sc_address(val.address).address
    principal = None
    if "DistributedPrincipal" in named:
        val = named["DistributedPrincipal"]
        if val.type != sx.SCValType.SCV_I128:
            raise EntryDecodeError(f"DistributedPrincipal is {val.type.name}, expected SCV_I128")
        principal = _i128_sdk(val)
    return EscrowInstance(raw_hash, escrow, token, principal, wasm_hash, "ProtocolFeeBps" in named)


def decode_token_sdk(buf: bytes) -> TokenInstance:
    raw_hash, items, wasm_hash = _instance_storage_sdk(buf)
    asset = wasm_hash is None
    named = _named_sdk(items, frozenset({_METADATA}))
    if _METADATA not in named:
        return TokenInstance(raw_hash, None, _NO_METADATA, stellar_asset=asset)
    try:
        fields = _struct_sdk(named[_METADATA], "METADATA", ("decimal", "symbol"))
        decimals = _field_sdk(fields, "METADATA", "decimal", sx.SCValType.SCV_U32, scval.from_uint32)
    except EntryDecodeError as exc:
        return TokenInstance(raw_hash, None, str(exc), stellar_asset=asset)
    symbol = fields.get("symbol")
    if symbol is None or symbol.type != sx.SCValType.SCV_STRING or symbol.str is None:
        return TokenInstance(raw_hash, decimals, None, stellar_asset=asset)
    return TokenInstance(raw_hash, decimals, None, symbol_text(symbol.str.sc_string), asset)


# --- what the reader calls -------------------------------------------------------------------


def decode_escrow_entry(xdr_b64: str) -> EscrowInstance:
    """Decode one escrow instance entry (base64 ``LedgerEntryData``): fast path, else the SDK."""
    return decode_escrow_bytes(decode_base64(xdr_b64))


def decode_escrow_bytes(buf: bytes) -> EscrowInstance:
    # decode_escrow_fast inlined: this runs once per escrow.
    return _decode_by_template(buf) or _walk_and_learn(buf) or decode_escrow_sdk(buf)


def decode_token_entry(xdr_b64: str) -> TokenInstance:
    return decode_token_bytes(decode_base64(xdr_b64))


def decode_token_bytes(buf: bytes) -> TokenInstance:
    return decode_token_fast(buf) or decode_token_sdk(buf)


def decode_base64(text: str) -> bytes:
    """The bytes of an entry's base64 ``xdr``; ``EntryDecodeError`` saying why not."""
    try:
        # strict_mode: the C equivalent of b64decode(validate=True), whose regex check costs ~10 µs.
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        raise EntryDecodeError(f"entry xdr is not base64 ({exc})") from exc


def decode_base64_batch(texts: list[str]) -> list[bytes | None]:
    """``decode_base64`` of many texts in one vectorised polars call, None where the caller must
    call ``decode_base64`` itself (which then decodes it or words the error)."""
    if not texts:
        return []
    return decode_base64_series(texts).to_list()


def decode_base64_series(texts: list[str]) -> pl.Series:
    """The bytes of each of ``texts`` as a binary Series, null where the caller must call
    ``decode_base64`` itself.

    binascii decodes about 1.3 bytes per ns, and an escrow entry is some 920 characters: that was
    the largest single cost of a sweep. Polars' decoder is another implementation with its own
    leniencies, so its result is kept only where encoding it again gives back the very text:
    then the text is the canonical base64 of those bytes, which ``a2b_base64(strict_mode=True)``
    decodes to the same bytes. Anything else (non-canonical padding bits, whitespace, bad
    characters, text polars cannot take) is null and goes the binascii way.
    """
    try:
        # Series operations, not a select: the lazy engine's planning costs more than the decode.
        text = pl.Series(texts, dtype=pl.String)
        raw = text.str.decode("base64", strict=False)
        return raw.zip_with(raw.bin.encode("base64") == text, pl.Series([None], dtype=pl.Binary))
    except Exception:  # e.g. a lone surrogate polars cannot hold: every text goes the binascii way
        return pl.Series([None] * len(texts), dtype=pl.Binary)
