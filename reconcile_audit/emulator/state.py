"""The ledger state the emulator serves, and its real XDR built with stellar-sdk.

Each escrow is one ``LiquifactEscrow`` contract instance: a PERSISTENT ``ContractData`` entry whose
``val.instance.storage`` holds ``Vec[Symbol("Escrow")]`` (the ``InvoiceEscrow`` struct as an
ScMap sorted by field name), ``Vec[Symbol("FundingToken")]`` and, when set,
``Vec[Symbol("DistributedPrincipal")]`` (see docs/domain.md). Each token is a Stellar Asset
Contract-like instance whose storage carries ``Symbol("METADATA") -> {decimal, name, symbol}``,
as soroban-env-host's ``set_metadata`` writes it.

The builders here use stellar-sdk's XDR objects and are the oracle: ``encode.py`` produces the
same bytes faster for the emulator's bulk build and is tested against them.
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
from dataclasses import dataclass, field
from typing import Final

from stellar_sdk import Address, Network, StrKey, scval
from stellar_sdk import xdr as stellar_xdr

from reconcile_audit.emulator.activity import ChainTransaction

TESTNET: Final = Network.TESTNET_NETWORK_PASSPHRASE

STORAGE_SHAPES: Final = ("standard", "minimal", "extra_keys", "escrow_extra_fields", "no_funding_token")

# Defaults chosen so a default entry is live at DEFAULT_LATEST_LEDGER.
DEFAULT_LATEST_LEDGER: Final = 1_000_000
DEFAULT_LAST_MODIFIED_LEDGER: Final = 900_000
DEFAULT_LIVE_UNTIL_LEDGER: Final = 3_000_000
DEFAULT_MATURITY: Final = 1_800_000_000  # unix seconds, u64
DEFAULT_YIELD_BPS: Final = 800
ESCROW_VERSION: Final = 1

# The escrow contracts run one Wasm per release; a hash only has to be a stable 32 bytes. Code from
# 2026-06-29 on moves tokens into the escrow (custodial), keeps Version 6, and stores
# ProtocolFeeBps; a non-SAC token runs its own Wasm.
ESCROW_WASM_HASH: Final = hashlib.sha256(b"liquifact-escrow-wasm").digest()
CUSTODIAL_ESCROW_WASM_HASH: Final = hashlib.sha256(b"liquifact-escrow-wasm-2026-06-29").digest()
TOKEN_WASM_HASH: Final = hashlib.sha256(b"custom-token-wasm").digest()
PROTOCOL_FEE_BPS: Final = 25

_SYMBOL_RE: Final = re.compile(r"[A-Za-z0-9_]{1,32}")
I128_MIN: Final = -(2**127)
I128_MAX: Final = 2**127 - 1


@dataclass(frozen=True)
class TokenSpec:
    """A token contract instance. ``decimals=None``: the instance has no ``METADATA``."""

    contract_id: str
    decimals: int | None = 7
    name: str = "USD Coin"
    symbol: str = "USDC"
    live_until_ledger: int = DEFAULT_LIVE_UNTIL_LEDGER
    last_modified_ledger: int = DEFAULT_LAST_MODIFIED_LEDGER
    stellar_asset: bool = True  # a Stellar Asset Contract; False: a Wasm token, whose balances are its own


@dataclass(frozen=True, kw_only=True)
class EscrowSpec:
    """One escrow contract instance as it sits on chain.

    ``live_until_ledger`` is served as given: 0 (or anything below the state's latest ledger)
    means archived. ``storage_shape`` picks one of ``STORAGE_SHAPES``:

    - ``standard``: Admin, DistributedPrincipal (when set), Escrow, FundingToken, Version.
    - ``minimal``: only Escrow, FundingToken and DistributedPrincipal (when set).
    - ``extra_keys``: standard plus unrelated keys of varied ScVal types sorting before and after
      Escrow, including look-alikes (``Symbol("Escrow")``, ``Vec[Symbol("EscrowV2")]``,
      ``Vec[Symbol("Escrow"), U32]``, ``Vec[Symbol("FundingTokenOld")]``) that a byte-scanning
      reader could mistake for the real keys.
    - ``escrow_extra_fields``: standard, with unknown fields inside the Escrow map
      (``currency_code: Symbol``, ``legal_hold: Bool``), still sorted by name.
    - ``no_funding_token``: standard without FundingToken.

    ``custodial``: the instance runs the custodial code (its own Wasm hash) and stores
    ``ProtocolFeeBps``. ``token_balance``: the funding token's ``Balance`` entry for this escrow
    (served when the token is a Stellar Asset Contract), or None for no entry, which reads as 0.
    """

    contract_id: str
    invoice_id: str
    funded_amount: int
    amount: int
    funding_target: int
    funding_token: str
    admin: str
    sme_address: str
    status: int = 1
    maturity: int = DEFAULT_MATURITY
    yield_bps: int = DEFAULT_YIELD_BPS
    distributed_principal: int | None = None
    has_escrow: bool = True
    last_modified_ledger: int = DEFAULT_LAST_MODIFIED_LEDGER
    live_until_ledger: int = DEFAULT_LIVE_UNTIL_LEDGER
    storage_shape: str = "standard"
    custodial: bool = False
    token_balance: int | None = None
    balance_last_modified_ledger: int = DEFAULT_LAST_MODIFIED_LEDGER
    balance_live_until_ledger: int = DEFAULT_LIVE_UNTIL_LEDGER

    def __post_init__(self) -> None:
        if self.storage_shape not in STORAGE_SHAPES:
            raise ValueError(f"storage_shape {self.storage_shape!r} is not one of {STORAGE_SHAPES}")
        if not _SYMBOL_RE.fullmatch(self.invoice_id):
            raise ValueError(f"invoice_id {self.invoice_id!r} is not a Soroban symbol [A-Za-z0-9_]{{1,32}}")
        for name in ("funded_amount", "amount", "funding_target"):
            value = getattr(self, name)
            if not I128_MIN <= value <= I128_MAX:
                raise ValueError(f"{name} {value} does not fit in i128")
        for name in ("distributed_principal", "token_balance"):
            value = getattr(self, name)
            if value is not None and not I128_MIN <= value <= I128_MAX:
                raise ValueError(f"{name} {value} does not fit in i128")


@dataclass(frozen=True)
class Mutation:
    """An escrow that changes while it is being read: the first ``after_reads`` reads of its
    instance see it as in ``LedgerState.escrows``, later ones see ``escrow``, modified at the
    ledger the emulator is at when it changes (a fund landing mid-sweep, for one)."""

    after_reads: int
    escrow: EscrowSpec


@dataclass(frozen=True)
class LedgerState:
    """What the emulator serves: escrow and token instances at ``latest_ledger``."""

    latest_ledger: int
    escrows: tuple[EscrowSpec, ...]
    tokens: tuple[TokenSpec, ...] = ()
    mutations: tuple[Mutation, ...] = field(default=(), kw_only=True)
    network_passphrase: str = TESTNET
    protocol_version: int = 23
    oldest_ledger_offset: int = field(default=120_960, kw_only=True)  # RPC's default 7-day window
    # What happened on chain (getEvents, getTransaction): the escrow calls that landed, with the
    # events of those that succeeded.
    transactions: tuple[ChainTransaction, ...] = field(default=(), kw_only=True)

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for contract_id in [e.contract_id for e in self.escrows] + [t.contract_id for t in self.tokens]:
            if contract_id in seen:
                raise ValueError(f"contract {contract_id} appears twice in the ledger state")
            seen.add(contract_id)


# --- stellar-sdk builders (the oracle) -------------------------------------------------------


def _sc_address(address: str) -> stellar_xdr.SCAddress:
    return Address(address).to_xdr_sc_address()


def _sorted_map(entries: list[tuple[stellar_xdr.SCVal, stellar_xdr.SCVal]]) -> stellar_xdr.SCVal:
    """An ScMap in Soroban key order. ``scval.to_map`` needs hashable keys, which ScVec is not."""
    # The SDK's comparator mirrors the host's ``Ord for ScVal``; its to_map uses it too.
    ordered = sorted(entries, key=functools.cmp_to_key(lambda a, b: scval._compare_sc_val(a[0], b[0])))
    return stellar_xdr.SCVal(
        stellar_xdr.SCValType.SCV_MAP,
        map=stellar_xdr.SCMap([stellar_xdr.SCMapEntry(key=k, val=v) for k, v in ordered]),
    )


def storage_key(*parts: str) -> stellar_xdr.SCVal:
    """A ``#[contracttype]`` enum key as the SDK stores it: ``Vec[Symbol(part), ...]``."""
    return scval.to_vec([scval.to_symbol(part) for part in parts])


def instance_key(contract_id: str) -> stellar_xdr.LedgerKey:
    """The ledger key of a contract's instance entry (ContractData, PERSISTENT)."""
    return stellar_xdr.LedgerKey(
        type=stellar_xdr.LedgerEntryType.CONTRACT_DATA,
        contract_data=stellar_xdr.LedgerKeyContractData(
            contract=_sc_address(contract_id),
            key=stellar_xdr.SCVal(stellar_xdr.SCValType.SCV_LEDGER_KEY_CONTRACT_INSTANCE),
            durability=stellar_xdr.ContractDataDurability.PERSISTENT,
        ),
    )


def escrow_struct(spec: EscrowSpec) -> stellar_xdr.SCVal:
    """The ``InvoiceEscrow`` ScMap (what ``get_escrow`` returns), fields sorted by name."""
    fields: dict[str, stellar_xdr.SCVal] = {
        "admin": scval.to_address(spec.admin),
        "amount": scval.to_int128(spec.amount),
        "funded_amount": scval.to_int128(spec.funded_amount),
        "funding_target": scval.to_int128(spec.funding_target),
        "invoice_id": scval.to_symbol(spec.invoice_id),
        "maturity": scval.to_uint64(spec.maturity),
        "sme_address": scval.to_address(spec.sme_address),
        "status": scval.to_uint32(spec.status),
        "yield_bps": scval.to_int64(spec.yield_bps),
    }
    if spec.storage_shape == "escrow_extra_fields":
        fields.update(ESCROW_EXTRA_FIELDS)
    return scval.to_struct(fields)


ESCROW_EXTRA_FIELDS: Final[dict[str, stellar_xdr.SCVal]] = {
    "currency_code": scval.to_symbol("USDC"),
    "legal_hold": scval.to_bool(False),
}

# Unrelated storage of the "extra_keys" shape. Constant across escrows; several are look-alikes
# of the keys a reader wants, to catch a reader that scans bytes instead of decoding keys.
_LOOKALIKE_ADDRESS: Final = StrKey.encode_contract(hashlib.sha256(b"lookalike-token").digest())
_INVESTORS: Final = (
    StrKey.encode_ed25519_public_key(hashlib.sha256(b"investor-1").digest()),
    StrKey.encode_ed25519_public_key(hashlib.sha256(b"investor-2").digest()),
)
EXTRA_STORAGE: Final[tuple[tuple[stellar_xdr.SCVal, stellar_xdr.SCVal], ...]] = (
    (scval.to_uint32(7), scval.to_bytes(b"\x00\x01opaque-config\xff")),
    (scval.to_symbol("Escrow"), scval.to_string("not the escrow: a bare symbol key")),
    (scval.to_symbol("counter"), scval.to_uint64(2**64 - 1)),
    (scval.to_bytes(b"raw-key"), scval.to_void()),
    (storage_key("Created"), scval.to_timepoint(1_700_000_000)),
    (
        scval.to_vec([scval.to_symbol("Escrow"), scval.to_uint32(1)]),
        scval.to_struct({"funded_amount": scval.to_int128(-1), "invoice_id": scval.to_symbol("DECOY")}),
    ),
    (
        storage_key("EscrowV2"),
        scval.to_struct(
            {
                "funded_amount": scval.to_int128(I128_MAX),
                "invoice_id": scval.to_symbol("DECOY_V2"),
                "status": scval.to_uint32(4),
            }
        ),
    ),
    (
        storage_key("Fees"),
        scval.to_map(
            {scval.to_symbol("bps"): scval.to_uint32(25), scval.to_symbol("cap"): scval.to_int128(10**20)}
        ),
    ),
    (storage_key("FundingTokenOld"), scval.to_address(_LOOKALIKE_ADDRESS)),
    (storage_key("Investors"), scval.to_vec([scval.to_address(a) for a in _INVESTORS])),
    (storage_key("Note"), scval.to_string("Net 60, úñíçødé ✓")),
    (storage_key("Paused"), scval.to_bool(True)),
    (storage_key("TotalShares"), scval.to_uint256(2**256 - 1)),
    (storage_key("Zeta"), scval.to_int256(-(2**255))),
    (
        scval.to_map({scval.to_symbol("k"): scval.to_int32(-7)}),
        scval.to_duration(86_400),
    ),
    (scval.to_address(_INVESTORS[0]), scval.to_int128(I128_MIN)),
)


def escrow_storage(spec: EscrowSpec) -> stellar_xdr.SCVal:
    """The instance storage map of an escrow contract, in Soroban key order."""
    entries: list[tuple[stellar_xdr.SCVal, stellar_xdr.SCVal]] = []
    if spec.has_escrow:
        entries.append((storage_key("Escrow"), escrow_struct(spec)))
    if spec.storage_shape != "no_funding_token":
        entries.append((storage_key("FundingToken"), scval.to_address(spec.funding_token)))
    if spec.distributed_principal is not None:
        entries.append((storage_key("DistributedPrincipal"), scval.to_int128(spec.distributed_principal)))
    if spec.custodial:
        entries.append((storage_key("ProtocolFeeBps"), scval.to_uint32(PROTOCOL_FEE_BPS)))
    if spec.storage_shape != "minimal":
        entries.append((storage_key("Admin"), scval.to_address(spec.admin)))
        entries.append((storage_key("Version"), scval.to_uint32(ESCROW_VERSION)))
    if spec.storage_shape == "extra_keys":
        entries.extend(EXTRA_STORAGE)
    return _sorted_map(entries)


def _instance_entry(
    contract_id: str, executable: stellar_xdr.ContractExecutable, storage: stellar_xdr.SCVal
) -> stellar_xdr.LedgerEntryData:
    return stellar_xdr.LedgerEntryData(
        type=stellar_xdr.LedgerEntryType.CONTRACT_DATA,
        contract_data=stellar_xdr.ContractDataEntry(
            ext=stellar_xdr.ExtensionPoint(0),
            contract=_sc_address(contract_id),
            key=stellar_xdr.SCVal(stellar_xdr.SCValType.SCV_LEDGER_KEY_CONTRACT_INSTANCE),
            durability=stellar_xdr.ContractDataDurability.PERSISTENT,
            val=stellar_xdr.SCVal(
                stellar_xdr.SCValType.SCV_CONTRACT_INSTANCE,
                instance=stellar_xdr.SCContractInstance(executable=executable, storage=storage.map),
            ),
        ),
    )


def escrow_instance_entry(spec: EscrowSpec) -> stellar_xdr.LedgerEntryData:
    """The escrow's contract-instance ``LedgerEntryData``, exactly as the emulator serves it."""
    return _instance_entry(spec.contract_id, _wasm(escrow_wasm_hash(spec)), escrow_storage(spec))


def escrow_wasm_hash(spec: EscrowSpec) -> bytes:
    return CUSTODIAL_ESCROW_WASM_HASH if spec.custodial else ESCROW_WASM_HASH


def _wasm(wasm_hash: bytes) -> stellar_xdr.ContractExecutable:
    return stellar_xdr.ContractExecutable(
        stellar_xdr.ContractExecutableType.CONTRACT_EXECUTABLE_WASM, wasm_hash=stellar_xdr.Hash(wasm_hash)
    )


def balance_key(token: str, holder: str) -> stellar_xdr.LedgerKey:
    """A Stellar Asset Contract's balance entry of ``holder``: ContractData{token,
    Vec[Symbol("Balance"), Address(holder)], PERSISTENT}."""
    return stellar_xdr.LedgerKey(
        type=stellar_xdr.LedgerEntryType.CONTRACT_DATA,
        contract_data=stellar_xdr.LedgerKeyContractData(
            contract=_sc_address(token),
            key=scval.to_vec([scval.to_symbol("Balance"), scval.to_address(holder)]),
            durability=stellar_xdr.ContractDataDurability.PERSISTENT,
        ),
    )


def balance_entry(token: str, holder: str, amount: int) -> stellar_xdr.LedgerEntryData:
    """The SAC's ``BalanceValue{amount, authorized, clawback}`` for ``holder``, as the host stores it."""
    key = balance_key(token, holder).contract_data
    return stellar_xdr.LedgerEntryData(
        type=stellar_xdr.LedgerEntryType.CONTRACT_DATA,
        contract_data=stellar_xdr.ContractDataEntry(
            ext=stellar_xdr.ExtensionPoint(0),
            contract=key.contract,
            key=key.key,
            durability=key.durability,
            val=scval.to_struct(
                {
                    "amount": scval.to_int128(amount),
                    "authorized": scval.to_bool(True),
                    "clawback": scval.to_bool(False),
                }
            ),
        ),
    )


def token_metadata(spec: TokenSpec) -> stellar_xdr.SCVal:
    return scval.to_struct(
        {
            "decimal": scval.to_uint32(spec.decimals if spec.decimals is not None else 0),
            "name": scval.to_string(spec.name),
            "symbol": scval.to_string(spec.symbol),
        }
    )


def token_instance_entry(spec: TokenSpec) -> stellar_xdr.LedgerEntryData:
    """A Stellar Asset Contract-like instance: METADATA (unless ``decimals`` is None), AssetInfo, Admin."""
    issuer = hashlib.sha256(b"issuer:" + spec.contract_id.encode()).digest()
    entries: list[tuple[stellar_xdr.SCVal, stellar_xdr.SCVal]] = [
        (storage_key("Admin"), scval.to_address(StrKey.encode_ed25519_public_key(issuer))),
        (
            storage_key("AssetInfo"),
            scval.to_vec(
                [
                    scval.to_symbol("AlphaNum4" if len(spec.symbol) <= 4 else "AlphaNum12"),
                    scval.to_struct(
                        {"asset_code": scval.to_string(spec.symbol), "issuer": scval.to_bytes(issuer)}
                    ),
                ]
            ),
        ),
    ]
    if spec.decimals is not None:
        entries.append((scval.to_symbol("METADATA"), token_metadata(spec)))
    executable = (
        stellar_xdr.ContractExecutable(stellar_xdr.ContractExecutableType.CONTRACT_EXECUTABLE_STELLAR_ASSET)
        if spec.stellar_asset
        else _wasm(TOKEN_WASM_HASH)
    )
    return _instance_entry(spec.contract_id, executable, _sorted_map(entries))


# --- seeded synthetic values -----------------------------------------------------------------


def random_contract_id(rng: random.Random) -> str:
    """A valid ``C...`` strkey drawn from ``rng``."""
    return StrKey.encode_contract(rng.randbytes(32))


def random_account_id(rng: random.Random) -> str:
    """A valid ``G...`` strkey drawn from ``rng``."""
    return StrKey.encode_ed25519_public_key(rng.randbytes(32))


def synthetic_state(
    count: int,
    *,
    seed: int = 0,
    latest_ledger: int = DEFAULT_LATEST_LEDGER,
    decimals: int = 7,
    invoice_prefix: str = "INV",
    custodial: bool = False,
) -> LedgerState:
    """``count`` standard escrows funded with one token; invoice ids ``{prefix}_{n:07d}``.

    Amounts are whole-cent multiples of ``10**decimals`` / 100 so they match a DECIMAL(15,2)
    database total exactly. For the demo, benchmark and bulk tests. ``custodial``: every escrow
    runs the custodial code and holds its funded amount in a Balance entry of the token.
    """
    rng = random.Random(seed)
    token = TokenSpec(contract_id=random_contract_id(rng), decimals=decimals)
    admin = random_account_id(rng)
    cent = 10**decimals // 100 if decimals >= 2 else 1
    escrows = []
    for n in range(count):
        amount_cents = rng.randrange(100_00, 5_000_000_00)
        funded_cents = rng.randrange(0, amount_cents + 1)
        escrows.append(
            EscrowSpec(
                contract_id=random_contract_id(rng),
                invoice_id=f"{invoice_prefix}_{n:07d}",
                funded_amount=funded_cents * cent,
                amount=amount_cents * cent,
                funding_target=amount_cents * cent,
                funding_token=token.contract_id,
                admin=admin,
                sme_address=random_account_id(rng),
                status=1 if funded_cents == amount_cents else 0,
                custodial=custodial,
                token_balance=funded_cents * cent if custodial else None,
            )
        )
    return LedgerState(latest_ledger=latest_ledger, escrows=tuple(escrows), tokens=(token,))


ESCROW_FILE_COLUMNS: Final = (
    "contract_id",
    "invoice_id",
    "funded_amount",
    "amount",
    "funding_target",
    "status",
    "funding_token",
)
"""Required columns of an escrow file (:func:`state_from_escrow_file`); amounts are i128 as
integer text. Optional: ``custodial`` (bool), ``token_balance`` (integer text or null),
``distributed_principal`` (integer text or null)."""


def state_from_escrow_file(
    path: str, *, latest_ledger: int = DEFAULT_LATEST_LEDGER, decimals: int = 7
) -> LedgerState:
    """The ledger state of the escrows listed in a Parquet file, each funding token a Stellar
    Asset Contract with ``decimals``: how a benchmark serves the escrows of a database it built."""
    import polars as pl  # the emulator's only use of polars: reading the file

    frame = pl.read_parquet(path)
    missing = [name for name in ESCROW_FILE_COLUMNS if name not in frame.columns]
    if missing:
        raise ValueError(f"escrow file {path} lacks the columns {missing}")
    rng = random.Random(0)
    admin, sme = random_account_id(rng), random_account_id(rng)
    optional = [
        name for name in ("custodial", "token_balance", "distributed_principal") if name in frame.columns
    ]
    escrows = []
    for row in frame.select(*ESCROW_FILE_COLUMNS, *optional).iter_rows(named=True):
        balance, principal = row.get("token_balance"), row.get("distributed_principal")
        escrows.append(
            EscrowSpec(
                contract_id=row["contract_id"],
                invoice_id=row["invoice_id"],
                funded_amount=int(row["funded_amount"]),
                amount=int(row["amount"]),
                funding_target=int(row["funding_target"]),
                status=int(row["status"]),
                funding_token=row["funding_token"],
                admin=admin,
                sme_address=sme,
                custodial=bool(row.get("custodial") or False),
                token_balance=None if balance is None else int(balance),
                distributed_principal=None if principal is None else int(principal),
            )
        )
    tokens = tuple(
        TokenSpec(contract_id=token, decimals=decimals)
        for token in frame.get_column("funding_token").unique(maintain_order=True).to_list()
    )
    return LedgerState(latest_ledger=latest_ledger, escrows=tuple(escrows), tokens=tokens)
