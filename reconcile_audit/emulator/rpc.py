"""The Stellar RPC methods over a pre-encoded ledger state, without HTTP and without faults.

Every instance entry is encoded once, at construction, into the JSON fragment that
``getLedgerEntries`` returns for it, so answering a batch is dict lookups and a string join.
Response shapes follow the Stellar RPC reference (developers.stellar.org, API reference) and are
parsed by stellar-sdk's ``soroban_rpc`` models in the tests.
"""

from __future__ import annotations

import base64
import binascii
import collections
import dataclasses
import functools
import hashlib
import itertools
import json
import struct
import threading
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, NamedTuple

from stellar_sdk import Address, scval
from stellar_sdk import xdr as stellar_xdr

from reconcile_audit.emulator import activity, encode, state
from reconcile_audit.emulator.jsonrpc import RpcError

MAX_KEYS: Final = 200  # stellar-rpc's getLedgerEntries limit
FRIENDBOT: Final[dict[str, str]] = {
    state.TESTNET: "https://friendbot.stellar.org/",
    "Test SDF Future Network ; October 2022": "https://friendbot-futurenet.stellar.org/",
}
# What the emulator reports a read-only call costs; plausible figures, never checked by clients.
SIMULATED_RESOURCES: Final = MappingProxyType(
    {"instructions": 1_635_562, "disk_read_bytes": 0, "write_bytes": 0, "resource_fee": 90_353}
)
_CLOSE_TIME_BASE: Final = 1_700_000_000
_SECONDS_PER_LEDGER: Final = 5


class Entry(NamedTuple):
    """One served entry: the base64 key, its JSON fragment, and what faults need to alter it."""

    key: str
    fragment: str
    contract_id: str
    last_modified: int
    live_until: int

    @property
    def xdr(self) -> str:
        # Kept only inside the fragment: a second copy would cost ~100 MB at 100k escrows.
        return fragment_xdr(self.fragment)


def fragment_xdr(fragment: str) -> str:
    """The base64 ``xdr`` of an entry's JSON fragment (:func:`entry_fragment`)."""
    return fragment.split('"xdr":"', 1)[1].split('"', 1)[0]


def entry_fragment(key: str, xdr: str, last_modified: int, live_until: int) -> str:
    # base64 needs no JSON escaping, so the fragment is written directly.
    return (
        f'{{"key":"{key}","xdr":"{xdr}","lastModifiedLedgerSeq":{last_modified},'
        f'"liveUntilLedgerSeq":{live_until}}}'
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _valid_ledger_key(key: str) -> bool:
    try:
        stellar_xdr.LedgerKey.from_xdr_bytes(base64.b64decode(key, validate=True))
    except (binascii.Error, ValueError, EOFError, TypeError, IndexError, KeyError, struct.error):
        return False
    return True


@dataclass(frozen=True)
class SimulationOutcome:
    """A simulateTransaction result: the JSON ``result`` object, and the contract it invoked."""

    result: dict[str, Any]
    contract_id: str | None


class RpcNode:
    """The ledger the emulator serves, indexed by base64 ledger key."""

    def __init__(self, ledger: state.LedgerState) -> None:
        self.state = ledger
        self.latest_ledger = ledger.latest_ledger
        self._lock = threading.Lock()
        self.escrows = {spec.contract_id: spec for spec in ledger.escrows}
        self.tokens = {spec.contract_id: spec for spec in ledger.tokens}
        escrow_entries = (
            self._entry(
                e.contract_id, encode.escrow_entry_xdr(e), e.last_modified_ledger, e.live_until_ledger
            )
            for e in ledger.escrows
        )
        token_entries = (
            self._entry(t.contract_id, encode.token_entry_xdr(t), t.last_modified_ledger, t.live_until_ledger)
            for t in ledger.tokens
        )
        # A Stellar Asset Contract keeps each holder's balance in its own entry; a Wasm token's
        # balances are its own business, so none is served for it.
        assets = {t.contract_id for t in ledger.tokens if t.stellar_asset}
        balance_entries = (
            self._balance(e)
            for e in ledger.escrows
            if e.token_balance is not None and e.funding_token in assets
        )
        self.entries = {
            entry.key: entry for entry in itertools.chain(escrow_entries, token_entries, balance_entries)
        }
        self._assets = assets
        # Instance key -> (reads before the change, the escrow after it); reads so far per key.
        self._pending = {
            _b64(encode.instance_key_xdr(m.escrow.contract_id)): (m.after_reads, m.escrow)
            for m in ledger.mutations
        }
        self._reads: collections.Counter[str] = collections.Counter()
        self._simulation_data: dict[str, str] = {}
        self.activity = activity.ActivityLog(
            [e for t in ledger.transactions for e in t.events],
            {t.tx_hash: t for t in ledger.transactions},
            ledger.oldest_ledger_offset,
        )

    @functools.cached_property
    def contract_by_address(self) -> dict[bytes, str]:
        """Contracts by XDR ``SCAddress``: simulateTransaction finds the callee without a strkey round trip."""
        return {encode.sc_address_xdr(c): c for c in (*self.escrows, *self.tokens)}

    @staticmethod
    def _entry(contract_id: str, data: bytes, last_modified: int, live_until: int) -> Entry:
        key = _b64(encode.instance_key_xdr(contract_id))
        xdr = _b64(data)
        return Entry(
            key, entry_fragment(key, xdr, last_modified, live_until), contract_id, last_modified, live_until
        )

    @staticmethod
    def _balance(spec: state.EscrowSpec) -> Entry:
        key = _b64(encode.balance_key_xdr(spec.funding_token, spec.contract_id))
        xdr = _b64(encode.balance_entry_xdr(spec.funding_token, spec.contract_id, spec.token_balance or 0))
        last_modified, live_until = spec.balance_last_modified_ledger, spec.balance_live_until_ledger
        return Entry(
            key,
            entry_fragment(key, xdr, last_modified, live_until),
            spec.contract_id,
            last_modified,
            live_until,
        )

    def advance(self, ledgers: int) -> int:
        with self._lock:
            self.latest_ledger += ledgers
            return self.latest_ledger

    # --- getLedgerEntries --------------------------------------------------------------------

    def lookup(self, params: Any) -> tuple[list[str], list[Entry]]:
        """The requested keys and the entries found for them, in request order, each once."""
        if not isinstance(params, dict):
            raise RpcError(-32602, "invalid parameters: expected an object with keys")
        keys = params.get("keys")
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise RpcError(-32602, "invalid parameters: keys must be a list of base64 strings")
        if params.get("xdrFormat") not in (None, "", "base64"):
            raise RpcError(
                -32602, f"unsupported xdrFormat {params.get('xdrFormat')!r}: the emulator speaks base64"
            )
        if len(keys) > MAX_KEYS:
            raise RpcError(-32602, f"key count ({len(keys)}) exceeds maximum supported ({MAX_KEYS})")
        found: list[Entry] = []
        seen: set[str] = set()
        if self._pending:
            self._mutate(keys)
        for index, key in enumerate(keys):
            entry = self.entries.get(key)
            if entry is None:
                # Only keys the state lacks need decoding: the known ones are valid by construction.
                if not _valid_ledger_key(key):
                    raise RpcError(-32602, f"cannot unmarshal key value {key} at index {index}")
                continue
            if key not in seen:
                seen.add(key)
                found.append(entry)
        return keys, found

    def _mutate(self, keys: list[str]) -> None:
        """Apply each due mutation before this request is answered, then count its reads."""
        for key in keys:
            pending = self._pending.get(key)
            if pending is None:
                continue
            after_reads, spec = pending
            if self._reads[key] >= after_reads:
                del self._pending[key]
                changed = dataclasses.replace(
                    spec,
                    last_modified_ledger=self.latest_ledger,
                    balance_last_modified_ledger=self.latest_ledger,
                )
                self.escrows[spec.contract_id] = changed
                instance = self._entry(
                    spec.contract_id,
                    encode.escrow_entry_xdr(changed),
                    changed.last_modified_ledger,
                    changed.live_until_ledger,
                )
                self.entries[instance.key] = instance
                if changed.token_balance is not None and changed.funding_token in self._assets:
                    balance = self._balance(changed)
                    self.entries[balance.key] = balance
            else:
                self._reads[key] += 1

    def ledger_entries_body(self, request_id: Any, fragments: list[str], latest: int) -> str:
        return "".join(
            (
                '{"jsonrpc":"2.0","id":',
                json.dumps(request_id),
                ',"result":{"entries":[',
                ",".join(fragments),
                '],"latestLedger":',
                str(latest),
                "}}",
            )
        )

    # --- small methods -----------------------------------------------------------------------

    def get_health(self) -> dict[str, Any]:
        latest = self.latest_ledger
        window = self.state.oldest_ledger_offset
        return {
            "status": "healthy",
            "latestLedger": latest,
            "oldestLedger": max(1, latest - window + 1),
            "ledgerRetentionWindow": window,
        }

    def get_events(self, params: Any) -> dict[str, Any]:
        return self.activity.get_events(params, self.latest_ledger)

    def get_transaction(self, params: Any) -> dict[str, Any]:
        return self.activity.get_transaction(params, self.latest_ledger)

    def get_network(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "passphrase": self.state.network_passphrase,
            "protocolVersion": self.state.protocol_version,
        }
        if self.state.network_passphrase in FRIENDBOT:
            result["friendbotUrl"] = FRIENDBOT[self.state.network_passphrase]
        return result

    def get_version_info(self) -> dict[str, Any]:
        return {
            "version": "reconcile-audit-emulator",
            "commitHash": "0" * 40,
            "buildTimestamp": "2026-01-01T00:00:00",
            "captiveCoreVersion": "emulated",
            "protocolVersion": self.state.protocol_version,
        }

    def get_latest_ledger(self) -> dict[str, Any]:
        sequence = self.latest_ledger
        header, ledger_hash = self._ledger_header(sequence)
        meta = stellar_xdr.LedgerCloseMeta(
            0,
            v0=stellar_xdr.LedgerCloseMetaV0(
                ledger_header=stellar_xdr.LedgerHeaderHistoryEntry(
                    hash=stellar_xdr.Hash(ledger_hash),
                    header=header,
                    ext=stellar_xdr.LedgerHeaderHistoryEntryExt(0),
                ),
                tx_set=stellar_xdr.TransactionSet(previous_ledger_hash=header.previous_ledger_hash, txs=[]),
                tx_processing=[],
                upgrades_processing=[],
                scp_info=[],
            ),
        )
        return {
            "id": ledger_hash.hex(),
            "protocolVersion": self.state.protocol_version,
            "sequence": sequence,
            "closeTime": str(_CLOSE_TIME_BASE + sequence * _SECONDS_PER_LEDGER),
            "headerXdr": header.to_xdr(),
            "metadataXdr": meta.to_xdr(),
        }

    def _ledger_header(self, sequence: int) -> tuple[stellar_xdr.LedgerHeader, bytes]:
        def ledger_hash(seq: int) -> bytes:
            return hashlib.sha256(f"{self.state.network_passphrase}:{seq}".encode()).digest()

        zero = stellar_xdr.Hash(bytes(32))
        header = stellar_xdr.LedgerHeader(
            ledger_version=stellar_xdr.Uint32(self.state.protocol_version),
            previous_ledger_hash=stellar_xdr.Hash(ledger_hash(sequence - 1)),
            scp_value=stellar_xdr.StellarValue(
                tx_set_hash=zero,
                close_time=stellar_xdr.TimePoint(
                    stellar_xdr.Uint64(_CLOSE_TIME_BASE + sequence * _SECONDS_PER_LEDGER)
                ),
                upgrades=[],
                ext=stellar_xdr.StellarValueExt(stellar_xdr.StellarValueType.STELLAR_VALUE_BASIC),
            ),
            tx_set_result_hash=zero,
            bucket_list_hash=zero,
            ledger_seq=stellar_xdr.Uint32(sequence),
            total_coins=stellar_xdr.Int64(1_000_000_000_000_000_000),
            fee_pool=stellar_xdr.Int64(0),
            inflation_seq=stellar_xdr.Uint32(0),
            id_pool=stellar_xdr.Uint64(0),
            base_fee=stellar_xdr.Uint32(100),
            base_reserve=stellar_xdr.Uint32(5_000_000),
            max_tx_set_size=stellar_xdr.Uint32(1000),
            skip_list=[zero, zero, zero, zero],
            ext=stellar_xdr.LedgerHeaderExt(0),
        )
        return header, ledger_hash(sequence)

    # --- simulateTransaction -----------------------------------------------------------------

    def simulate(self, params: Any) -> SimulationOutcome:
        """Read-only invocations: ``get_escrow`` (and a few getters) on escrows, ``decimals`` etc. on tokens."""
        if not isinstance(params, dict) or not isinstance(params.get("transaction"), str):
            raise RpcError(-32602, "invalid parameters: transaction must be a base64 TransactionEnvelope")
        try:
            envelope = stellar_xdr.TransactionEnvelope.from_xdr(params["transaction"])
        except Exception as exc:  # any decoding failure of client input is invalid params
            raise RpcError(-32602, f"could not unmarshal transaction: {exc}") from None
        latest = self.latest_ledger
        invocation = _invocation(envelope, self.contract_by_address)
        if invocation is None:
            return SimulationOutcome(
                {
                    "error": "simulation supports a single InvokeHostFunction invoke_contract operation",
                    "latestLedger": latest,
                },
                None,
            )
        contract_id, function, args = invocation
        try:
            value = self._call(contract_id, function, args, latest)
        except _HostError as exc:
            return SimulationOutcome({"error": str(exc), "events": [], "latestLedger": latest}, contract_id)
        return SimulationOutcome(
            {
                "transactionData": self._transaction_data(contract_id),
                "minResourceFee": str(SIMULATED_RESOURCES["resource_fee"]),
                "events": [],
                "results": [{"auth": [], "xdr": value}],
                "cost": {"cpuInsns": "1635562", "memBytes": "1201073"},
                "latestLedger": latest,
            },
            contract_id,
        )

    def _call(self, contract_id: str, function: str, args: list[stellar_xdr.SCVal], latest: int) -> str:
        escrow = self.escrows.get(contract_id)
        token = self.tokens.get(contract_id)
        spec_live_until = escrow.live_until_ledger if escrow else token.live_until_ledger if token else None
        if spec_live_until is None:
            raise _HostError(
                "Storage, MissingValue", "trying to get non-existing value for contract instance", contract_id
            )
        if spec_live_until < latest:
            raise _HostError(
                "Storage, ExceededLimit", "contract instance entry is archived; restore it first", contract_id
            )
        if token is not None and function == "balance":
            return self._simulated_balance(contract_id, args)
        if args:
            raise _HostError(
                "Context, UnexpectedSize", f"{function} takes no arguments, got {len(args)}", contract_id
            )
        if escrow is not None:
            if function == "get_escrow":
                if not escrow.has_escrow:
                    raise _HostError("Contract, #1", "escrow not initialized", contract_id)
                return _b64(encode.escrow_struct_xdr(escrow))
            if function == "get_funding_token" and escrow.storage_shape != "no_funding_token":
                return scval.to_address(escrow.funding_token).to_xdr()
        if token is not None:
            if function in ("decimals", "name", "symbol"):
                if token.decimals is None:
                    raise _HostError("Storage, MissingValue", "token has no METADATA", contract_id)
                if function == "decimals":
                    return scval.to_uint32(token.decimals).to_xdr()
                return scval.to_string(token.name if function == "name" else token.symbol).to_xdr()
        raise _HostError(
            "WasmVm, MissingValue", f"trying to invoke non-existent contract function {function}", contract_id
        )

    def _simulated_balance(self, token: str, args: list[stellar_xdr.SCVal]) -> str:
        """A token's ``balance(id: Address) -> i128``: what the escrow at ``id`` holds of it, 0 for
        any other address (as a Stellar Asset Contract answers for an absent Balance entry)."""
        if len(args) != 1 or args[0].type != stellar_xdr.SCValType.SCV_ADDRESS or args[0].address is None:
            raise _HostError("Context, UnexpectedSize", "balance takes one Address argument", token)
        holder = self.escrows.get(Address.from_xdr_sc_address(args[0].address).address)
        held = 0
        if holder is not None and holder.funding_token == token and holder.token_balance is not None:
            held = holder.token_balance
        return scval.to_int128(held).to_xdr()

    def _transaction_data(self, contract_id: str) -> str:
        cached = self._simulation_data.get(contract_id)
        if cached is not None:
            return cached
        read_only = [encode.instance_key_xdr(contract_id)]
        if contract_id in self.escrows:
            read_only.append(encode.contract_code_key_xdr(state.ESCROW_WASM_HASH))
        data = _b64(encode.soroban_transaction_data_xdr(read_only, **SIMULATED_RESOURCES))
        self._simulation_data[contract_id] = data
        return data


class _HostError(Exception):
    """A failed simulation; rendered like soroban-env-host's diagnostic text."""

    def __init__(self, error: str, detail: str, contract_id: str) -> None:
        super().__init__(
            f"HostError: Error({error})\n\nEvent log (newest first):\n"
            f'   0: [Diagnostic Event] contract:{contract_id}, topics:[error, Error({error})], data:"{detail}"'
        )


def _invocation(
    envelope: stellar_xdr.TransactionEnvelope, known: dict[bytes, str]
) -> tuple[str, str, list[stellar_xdr.SCVal]] | None:
    if envelope.type != stellar_xdr.EnvelopeType.ENVELOPE_TYPE_TX or envelope.v1 is None:
        return None
    operations = envelope.v1.tx.operations
    if len(operations) != 1:
        return None
    body = operations[0].body
    if body.type != stellar_xdr.OperationType.INVOKE_HOST_FUNCTION or body.invoke_host_function_op is None:
        return None
    function = body.invoke_host_function_op.host_function
    if (
        function.type != stellar_xdr.HostFunctionType.HOST_FUNCTION_TYPE_INVOKE_CONTRACT
        or function.invoke_contract is None
    ):
        return None
    call = function.invoke_contract
    function_name = call.function_name.sc_symbol.decode("utf-8", errors="replace")
    contract = known.get(call.contract_address.to_xdr_bytes())
    if contract is None:
        try:
            contract = Address.from_xdr_sc_address(call.contract_address).address
        except ValueError:
            return None  # a muxed, balance or pool address: nothing the emulator can call
    return contract, function_name, list(call.args)
