"""The batched reader: every escrow's instance entry through ``getLedgerEntries``.

One ``ContractData`` instance key per contract, sent as ``getLedgerEntries`` batches of at most
``settings.rpc_batch_size`` (<= 200) keys with ``settings.rpc_concurrency`` requests in flight.
Answers are matched by key, never by position. Each distinct funding token's instance is then read
once (batched the same way) for its ``METADATA.decimal``, falling back to
``settings.token_decimals``.

Failure is data, per contract: when a batch's retries run out, the batch is bisected (a bounded
number of extra requests per run, :class:`~reconcile_audit.compute.ledger.rpc.RetryPolicy`) so one
poisoned key cannot take 199 innocent ones down; whatever still fails becomes ``error`` rows with
the cause. An entry that does not decode is read again (at most ``MAX_REREADS`` times, since a
corrupt body can be a transport fault) and then becomes an ``error`` row. Entries for keys that
were not asked for are counted (``faults_by_kind["unrequested_entry"]``) and otherwise ignored.
After ``RetryPolicy.breaker_failures`` calls fail in a row with no success between, the remaining
batches are not sent: the RPC is down, and waiting out every backoff would only delay the report.

The reader runs on asyncio; :func:`read_ledger_batched` is synchronous and works with or without a running
event loop (inside Jupyter it runs the sweep on a worker thread with its own loop).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import gc
import itertools
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, NamedTuple

import polars as pl
from stellar_sdk.soroban_rpc import GetLatestLedgerResponse, GetLedgerEntriesResponse
from tqdm.auto import tqdm

from reconcile_audit.compute.ledger.columns import ESCROW_COLUMNS, decode_escrow_columns, learn_layout
from reconcile_audit.compute.ledger.rpc import (
    MAX_KEYS,
    RetryPolicy,
    RpcClient,
    RpcFault,
    TransportCounters,
    client_for,
    run_sync,
)
from reconcile_audit.compute.ledger.types import (
    UNAVAILABLE,
    LedgerRead,
    LedgerStats,
    unavailable,
    unknown_decimals,
)
from reconcile_audit.compute.ledger.xdr import (
    EntryDecodeError,
    EscrowInstance,
    TokenBalance,
    TokenInstance,
    balance_key_of_hashes,
    contract_hash,
    contract_id_of,
    decode_balance_bytes,
    decode_base64,
    decode_base64_batch,
    decode_base64_series,
    decode_escrow_bytes,
    decode_token_bytes,
    instance_key_of_hash,
    key_owner,
    key_owners,
    new_tuple,
)
from reconcile_audit.compute.schemas import (
    BALANCE_COLUMNS,
    LEDGER,
    chunked_like,
    compacted,
    conform,
    stored_once,
)
from reconcile_audit.compute.settings import Settings

log = logging.getLogger(__name__)

MAX_REREADS: Final = 2
# Escrows read, decoded and turned into frame columns at a time (issue 14): at 1M escrows, all of
# them at once were 1.4 GB of Python objects before the frame was built. 200k at a time peaked
# 0.18 GB above 100k, for no time saved on loopback.
SWEEP_CHUNK: Final = 100_000
# Escrow instance entries set aside to be decoded as columns, at most, before they are (each is
# held as its ~920-character base64 text until then).
COLUMNAR_AT: Final = 25_000
# Characters of a base64 contract-instance key (48 bytes): what the columnar path decodes.
_INSTANCE_KEY_CHARS: Final = 64


# --- the sweep -------------------------------------------------------------------------------


class _Found(NamedTuple):
    value: EscrowInstance | TokenInstance | _Balance
    latest_ledger: int
    last_modified_ledger: int
    live_until_ledger: int | None


@dataclass(frozen=True, slots=True)
class _Missing:
    latest_ledger: int


@dataclass(frozen=True, slots=True)
class _Failed:
    cause: str
    latest_ledger: int | None = None


class _Balance(NamedTuple):
    """A SAC balance entry as the sweep keeps it: owned by the token contract."""

    contract_hash: bytes  # the token's: the owner check compares it with the key's
    balance: TokenBalance


@dataclass(frozen=True, slots=True)
class _Columnar:
    """An escrow instance entry decoded into the sweep's columns (``_Sweep.columnar``), not into
    Python objects; one value serves every such entry of an answer."""

    latest_ledger: int


@dataclass
class _SetAside:
    """Escrow instance entries of the answers read so far, to be decoded together as columns."""

    keys: list[str] = field(default_factory=list)
    xdrs: list[str] = field(default_factory=list)
    last_modified: list[int] = field(default_factory=list)
    live_until: list[int | None] = field(default_factory=list)
    latest: list[int] = field(default_factory=list)


_Outcome = _Found | _Missing | _Failed | _Columnar
Decoder = Callable[[bytes], EscrowInstance | TokenInstance | _Balance]  # of an entry's XDR bytes


def _decode_pair_entry(buf: bytes) -> EscrowInstance | _Balance:
    """An entry of a balance-pair read: the escrow's instance, or the token's balance entry of it."""
    if buf[44:48] == b"\x00\x00\x00\x10":  # the key is an SCV_VEC (Balance, holder), not the instance
        return _Balance(buf[12:44], decode_balance_bytes(buf))
    return decode_escrow_bytes(buf)


@dataclass
class _Sweep:
    """The mutable state of one run's reads; results keyed by base64 ledger key."""

    client: RpcClient
    policy: RetryPolicy
    batch_size: int
    outcomes: dict[str, _Outcome] = field(default_factory=dict)
    ledgers: list[int] = field(default_factory=list)
    entries: int = 0
    batches: int = 0
    bisect_budget: int = 0
    progress: Any = None  # a tqdm bar counting batches
    # Requests for part of a batch (a split, a bisection, a re-read of undecodable entries): a
    # pair of keys read by such requests may come from two ledgers.
    partial_fetches: int = 0
    set_aside: _SetAside = field(default_factory=_SetAside)
    blocks: list[pl.DataFrame] = field(default_factory=list)  # ESCROW_COLUMNS with key and ledgers
    # Outcomes written over a _Columnar one (a key read again, or failed after): until one is,
    # every row of ``blocks`` is its key's outcome, and ``columnar`` need not check them.
    overwritten: int = 0

    @property
    def counters(self) -> TransportCounters:
        return self.client.counters

    async def read(self, keys: list[str], decode: Decoder, *, pairs: bool = False) -> None:
        """Read ``keys`` in batches; with ``pairs``, ``keys`` is (instance, balance) pairs laid
        flat, and an even batch size keeps each pair in one request, so both are from one ledger."""
        size = max(2, self.batch_size - self.batch_size % 2) if pairs else self.batch_size
        batches = [keys[i : i + size] for i in range(0, len(keys), size)]
        self.batches += len(batches)
        self.progress.total += len(batches)
        self.progress.refresh()
        columnar = decode is not decode_token_bytes

        async def one(batch: list[str]) -> None:
            await self.fetch(batch, decode, columnar=columnar)
            self.progress.update(1)
            if len(self.set_aside.keys) >= COLUMNAR_AT:
                await self._decode_set_aside(decode)

        await asyncio.gather(*(one(batch) for batch in batches))
        await self._decode_set_aside(decode)

    async def fetch(
        self,
        keys: list[str],
        decode: Decoder,
        *,
        retries: int | None = None,
        reread: int = 0,
        columnar: bool = False,
    ) -> None:
        try:
            answer = await self.client.call(
                "getLedgerEntries",
                {"keys": keys},
                GetLedgerEntriesResponse,
                retries=retries,
                can_split=len(keys) > 1,
            )
        except RpcFault as fault:
            await self._after_fault(keys, decode, fault)
            return
        self.ledgers.append(answer.latest_ledger)
        await self._take(keys, decode, answer, reread, columnar)

    async def _after_fault(self, keys: list[str], decode: Decoder, fault: RpcFault) -> None:
        half = len(keys) // 2
        if fault.split and len(keys) > 1:
            self.partial_fetches += 1
            await asyncio.gather(self.fetch(keys[:half], decode), self.fetch(keys[half:], decode))
            return
        if len(keys) > 1 and self.bisect_budget >= 2 and fault.kind != "breaker":
            self.bisect_budget -= 2
            self.partial_fetches += 1
            self.counters.fault("bisect")
            retries = self.policy.bisect_retries
            await asyncio.gather(
                self.fetch(keys[:half], decode, retries=retries),
                self.fetch(keys[half:], decode, retries=retries),
            )
            return
        if fault.transient or fault.kind == "breaker":
            self._fail(keys, unavailable(f"getLedgerEntries, retries exhausted: {fault}"))
        else:
            self._fail(keys, f"not read: getLedgerEntries refused the request (not retried): {fault}")

    def _fail(self, keys: list[str], cause: str) -> None:
        self._overwriting(keys)
        for key in keys:
            self.outcomes[key] = _Failed(cause)

    def _overwriting(self, keys: list[str]) -> None:
        outcomes = self.outcomes
        if not outcomes.keys().isdisjoint(keys):  # else none of them was read before
            self.overwritten += sum(type(outcomes.get(key)) is _Columnar for key in keys)

    async def _take(
        self, keys: list[str], decode: Decoder, answer: GetLedgerEntriesResponse, reread: int, columnar: bool
    ) -> None:
        """Record what ``answer`` says of ``keys``. With ``columnar``, escrow instance entries are
        set aside for :meth:`_decode_set_aside`; every other entry is decoded now."""
        latest = answer.latest_ledger
        asked = set(keys)
        got: dict[str, _Outcome] = {}
        raw: dict[str, str] = {}
        set_aside = self.set_aside if columnar else None
        marker = _Columnar(latest)
        now: list[Any] = []  # (key, entry) decoded one by one
        for entry in answer.entries or []:
            key = entry.key
            if key not in asked:
                key = _canonical_key(key)
                if key not in asked:
                    self.counters.fault("unrequested_entry")
                    continue
            xdr = entry.xdr
            if key in raw:
                if raw[key] != xdr:
                    if got.get(key) is marker:  # its entry is set aside: never take it from there
                        self.overwritten += 1
                    got[key] = _Failed("the RPC returned two different entries for this key", latest)
                continue
            raw[key] = xdr
            if set_aside is not None and len(key) == _INSTANCE_KEY_CHARS:
                set_aside.keys.append(key)
                set_aside.xdrs.append(xdr)
                set_aside.last_modified.append(entry.last_modified_ledger)
                set_aside.live_until.append(entry.live_until_ledger)
                set_aside.latest.append(latest)
                got[key] = marker
            else:
                now.append((key, entry))
        # Base64 of the whole answer at once; None where it must be decoded alone.
        blobs = decode_base64_batch([entry.xdr for _, entry in now])
        for (key, entry), blob in zip(now, blobs, strict=True):
            if key not in got:  # else the RPC answered it twice, differently
                got[key] = self._decoded(
                    key, entry.xdr, blob, decode, latest, entry.last_modified_ledger, entry.live_until_ledger
                )
        self.entries += len(raw)
        outcomes = self.outcomes
        self._overwriting(keys)
        outcomes.update(got)
        if len(got) != len(asked):
            missing = _Missing(latest)  # immutable: one value serves every key the answer left out
            for key in keys:
                if key not in got:
                    outcomes[key] = missing
        await self._read_again([key for key in keys if type(got.get(key)) is _Failed], decode, reread)

    async def _read_again(self, bad: list[str], decode: Decoder, reread: int) -> None:
        if not bad:
            return
        self.counters.fault("undecodable_entry", len(bad))
        if reread < MAX_REREADS:
            # A corrupt entry may be a transport fault: read those keys again before blaming them.
            self.partial_fetches += 1
            await self.fetch(bad, decode, reread=reread + 1)

    def _decoded(
        self,
        key: str,
        xdr: str,
        blob: bytes | None,
        decode: Decoder,
        latest: int,
        last_modified: int,
        live_until: int | None,
    ) -> _Outcome:
        try:
            value = decode(decode_base64(xdr) if blob is None else blob)
        except Exception as exc:
            return _undecodable(exc, latest)
        if value.contract_hash != key_owner(key):
            owner = contract_id_of(value.contract_hash)
            return _Failed(f"the entry answered for this key belongs to {owner}", latest)
        return new_tuple(_Found, (value, latest, last_modified, live_until))  # type: ignore[no-any-return]

    async def _decode_set_aside(self, decode: Decoder) -> None:
        """Decode the escrow instance entries set aside as columns (``blocks``); whatever no
        learnt layout takes (another shape, a malformed entry, another owner) is decoded one by
        one, as :meth:`_take` would have, and read again if it does not decode."""
        set_aside, self.set_aside = self.set_aside, _SetAside()
        if not set_aside.keys:
            return
        blobs = decode_base64_series(set_aside.xdrs)
        keys = pl.Series("key", set_aside.keys, dtype=pl.String)
        owners = key_owners(keys)
        taken = [decode_escrow_columns(blobs, owners)]
        left = _rows_left(len(set_aside.keys), taken[0])
        tries = 0
        while not left.is_empty() and tries < _LEARNING_TRIES:
            # A shape no layout knows yet (say, another invoice-id length): learn it from one of its
            # entries and take the rest of them as columns too.
            blob = blobs[left[tries % left.len()]]
            tries += 1
            if blob is None or not learn_layout(blob):
                continue
            more = decode_escrow_columns(blobs.gather(left), owners.gather(left))
            more = more.with_columns(left.gather(more.get_column("row")).alias("row"))
            taken.append(more)
            left = left.filter(~left.is_in(more.get_column("row").implode()))
        block = pl.concat(taken)
        rows = block.get_column("row")
        self.blocks.append(
            block.with_columns(
                keys.gather(rows),
                pl.Series("latest_ledger", set_aside.latest, dtype=pl.Int64).gather(rows),
                pl.Series("last_modified_ledger", set_aside.last_modified, dtype=pl.Int64).gather(rows),
                pl.Series("live_until_ledger", set_aside.live_until, dtype=pl.Int64).gather(rows),
            ).drop("row")
        )
        outcomes = self.outcomes
        bad = []
        self.overwritten += left.len()  # their keys may have a row in an earlier block
        for row in left.to_list():
            key = set_aside.keys[row]
            if type(outcomes.get(key)) is not _Columnar:  # the RPC answered it twice, differently
                continue
            outcome = self._decoded(
                key,
                set_aside.xdrs[row],
                blobs[row],
                decode,
                set_aside.latest[row],
                set_aside.last_modified[row],
                set_aside.live_until[row],
            )
            outcomes[key] = outcome
            if type(outcome) is _Failed:
                bad.append(key)
        await self._read_again(bad, decode, 0)

    def columnar(self, order: pl.DataFrame) -> pl.DataFrame:
        """The escrow columns of the keys of ``order`` (contract_id, key) whose outcome is
        ``_Columnar``, in ``order``'s order, with their contract ids: the last read of each."""
        if not self.blocks:
            return order.clear().join(_EMPTY_BLOCK, on="key")
        if len(self.blocks) > 1:
            self.blocks = [pl.concat(self.blocks)]
        block = self.blocks[0]
        if self.overwritten:
            outcomes = self.outcomes
            keys = block.get_column("key").to_list()
            current = pl.Series([type(outcomes.get(key)) is _Columnar for key in keys], dtype=pl.Boolean)
            block = block.filter(current).unique("key", keep="last", maintain_order=True)
        return order.join(block, on="key", how="inner", maintain_order="left")


_LEDGERS: Final = ("latest_ledger", "last_modified_ledger", "live_until_ledger")
_LEARNING_TRIES: Final = 16  # entries of unknown shape tried as a layout's example, per decode
_EMPTY_BLOCK: Final = (
    ESCROW_COLUMNS.to_frame()
    .drop("row")
    .with_columns(
        pl.lit(None, dtype=pl.String).alias("key"),
        *(pl.lit(None, dtype=pl.Int64).alias(name) for name in _LEDGERS),
    )
)


def _rows_left(n: int, taken: pl.DataFrame) -> pl.Series:
    """Positions 0..n-1 that ``taken`` (decode_escrow_columns' answer) has no row for."""
    rows = pl.Series("row", range(n), dtype=pl.UInt32)
    return rows.filter(~rows.is_in(taken.get_column("row").implode()))


def _undecodable(exc: Exception, latest: int) -> _Failed:
    if isinstance(exc, EntryDecodeError):
        return _Failed(f"undecodable entry: {exc}", latest)
    # A decoder bug must cost one row, never the run.
    return _Failed(f"undecodable entry ({type(exc).__name__}: {exc})", latest)


def _canonical_key(key: str) -> str:
    try:
        return base64.b64encode(binascii.a2b_base64(key, strict_mode=True)).decode("ascii")
    except (binascii.Error, ValueError):
        return key


def read_ledger_batched(
    ids: pl.Series, settings: Settings, *, progress: bool = True, policy: RetryPolicy | None = None
) -> LedgerRead:
    """The LEDGER frame of ``ids`` (distinct, non-empty: ``distinct_ids``) through
    ``getLedgerEntries`` batches."""
    policy = policy or RetryPolicy()
    with _collector_paused():
        return run_sync(lambda: _read(ids, settings, policy, progress))


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for the sweep, restoring its state after.

    The sweep allocates about ten small acyclic objects per escrow; the collector's passes over
    them (and over everything else alive in the process) cost about a fifth of a 100k sweep.
    Reference counting still frees everything; cycles made meanwhile are collected afterwards.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@dataclass
class _Carried:
    """What one chunk's sweep hands the next: the tokens already read (instance key and outcome),
    the bisection budget left, and every chunk's ledgers, batches and entries."""

    token_keys: dict[str, str] = field(default_factory=dict)  # token contract id -> instance key
    token_outcomes: dict[str, _Outcome] = field(default_factory=dict)
    bisect_budget: int = 0
    ledgers: list[int] = field(default_factory=list)
    batches: int = 0
    entries: int = 0


async def _read(ids: pl.Series, settings: Settings, policy: RetryPolicy, progress: bool) -> LedgerRead:
    """Every escrow of ``ids``, ``SWEEP_CHUNK`` at a time over one RPC session: a chunk's decoded
    entries (about 1.4 KB of Python objects per escrow) become frame columns before the next
    chunk is read, so they never all live at once."""
    started = time.perf_counter()
    bar = tqdm(total=0, desc="getLedgerEntries", unit="batch", disable=not progress, leave=False)
    carried = _Carried(bisect_budget=policy.bisect_budget)
    frames: list[pl.DataFrame] = []
    sweep_start: int | None = None
    try:
        async with client_for(settings, policy) as client:
            sweep_start = await _latest_ledger(client) if ids.len() else None
            # At least one chunk: with no escrow, the configured currencies' tokens are still read.
            for first in range(0, max(ids.len(), 1), SWEEP_CHUNK):
                chunk = ids.slice(first, SWEEP_CHUNK).to_list()  # Python strings a chunk at a time
                frames.append(await _read_chunk(client, chunk, settings, policy, bar, carried))
    finally:
        bar.close()
    frame = compacted(pl.concat(frames, rechunk=False))  # the columns no escrow has a value in
    symbols = {
        token: symbol
        for token, key in carried.token_keys.items()
        if (symbol := _token_symbol(carried.token_outcomes.get(key)))
    }
    seconds = time.perf_counter() - started
    stats = LedgerStats.of_sweep(
        client.counters, batches=carried.batches, entries=carried.entries, seconds=seconds
    )
    return LedgerRead(
        frame=frame,
        ledger_min=min(carried.ledgers) if carried.ledgers else None,
        ledger_max=max(carried.ledgers) if carried.ledgers else None,
        stats=stats,
        token_symbols=MappingProxyType(symbols),
        sweep_start_ledger=sweep_start,
    )


async def _read_chunk(
    client: RpcClient, ids: list[str], settings: Settings, policy: RetryPolicy, bar: Any, carried: _Carried
) -> pl.DataFrame:
    """The LEDGER frame of one chunk of ``ids``, its escrows, tokens and balances read."""
    keys: dict[str, str] = {}
    invalid: dict[str, str] = {}
    for contract_id in ids:
        try:
            keys[contract_id] = instance_key_of_hash(contract_hash(contract_id))
        except ValueError as exc:
            invalid[contract_id] = f"invalid contract address: {exc}"
    batch_size = max(1, min(settings.rpc_batch_size, MAX_KEYS))
    sweep = _Sweep(
        client,
        policy,
        batch_size,
        outcomes=dict(carried.token_outcomes),
        bisect_budget=carried.bisect_budget,
        progress=bar,
    )
    token_keys = carried.token_keys
    escrow_keys = list(keys.values())
    order = pl.DataFrame({"contract_id": list(keys), "key": escrow_keys}, schema=_ORDER)
    # A probe batch first: the token its custodial escrows are funded in is, in practice, the
    # token of most escrows, so the rest are read with that token's balance key beside their
    # instance key, one request for both, instead of a second pass for every pair.
    await sweep.read(escrow_keys[:batch_size], decode_escrow_bytes)
    probe = dict(itertools.islice(keys.items(), batch_size))
    read = sweep.columnar(order.head(batch_size))
    await _read_tokens(sweep, probe, read, token_keys, settings)
    likely = _likely_balance_token(probe, read, sweep.outcomes, token_keys, settings)
    guessed = await _read_rest(sweep, escrow_keys[batch_size:], likely)
    read = sweep.columnar(order)
    await _read_tokens(sweep, keys, read, token_keys, settings)
    custody = _custody(keys, read, sweep.outcomes, token_keys, settings)
    pairs = await _read_balances(sweep, custody, keys, guessed)
    for key in token_keys.values():
        if key in sweep.outcomes:
            carried.token_outcomes[key] = sweep.outcomes[key]
    carried.bisect_budget = sweep.bisect_budget
    carried.ledgers += sweep.ledgers
    carried.batches += sweep.batches
    carried.entries += sweep.entries
    decimals = {
        token: _token_decimals(token, sweep.outcomes.get(key), settings) for token, key in token_keys.items()
    }
    frame = _frame(ids, keys, invalid, sweep.outcomes, decimals, sweep.columnar(order))
    return _with_balances(frame, ids, custody, pairs, sweep.outcomes)


_ORDER: Final = pl.Schema({"contract_id": pl.String, "key": pl.String})


async def _read_tokens(
    sweep: _Sweep,
    keys: Mapping[str, str],
    columnar: pl.DataFrame,
    token_keys: dict[str, str],
    settings: Settings,
) -> None:
    """Read the instance of every funding token of the escrows read so far, and of every token an
    invoice must be funded in (so a wrong token is named by symbol), unless already in ``token_keys``."""
    tokens = [
        token
        for token in dict.fromkeys(
            [*_funding_tokens(keys, columnar, sweep.outcomes), *(settings.currency_tokens or {}).values()]
        )
        if token not in token_keys
    ]
    if not tokens:
        return
    new = {token: instance_key_of_hash(contract_hash(token)) for token in tokens}
    token_keys.update(new)
    await sweep.read(list(new.values()), decode_token_bytes)


def _likely_balance_token(
    keys: Mapping[str, str],
    columnar: pl.DataFrame,
    outcomes: Mapping[str, _Outcome],
    token_keys: Mapping[str, str],
    settings: Settings,
) -> bytes | None:
    """The contract hash of the Stellar Asset Contract most custodial escrows of ``keys`` are
    funded in, or None when none of them has a balance to read."""
    seen: dict[bytes, int] = {}
    for found in _custody(keys, columnar, outcomes, token_keys, settings).values():
        if found.token_hash is not None:
            seen[found.token_hash] = seen.get(found.token_hash, 0) + 1
    return max(seen, key=seen.__getitem__) if seen else None


async def _read_rest(sweep: _Sweep, escrow_keys: list[str], likely: bytes | None) -> dict[str, str]:
    """Read ``escrow_keys``; with ``likely``, each beside its balance key in that token, in one
    request. Returns escrow instance key -> the balance key read beside it."""
    if likely is None:
        await sweep.read(escrow_keys, decode_escrow_bytes)
        return {}
    guessed: dict[str, str] = {}
    flat: list[str] = []
    for key, owner in zip(escrow_keys, key_owners(escrow_keys).to_list(), strict=True):
        guessed[key] = balance = balance_key_of_hashes(likely, owner)
        flat += (key, balance)
    await sweep.read(flat, _decode_pair_entry, pairs=True)
    return guessed


async def _latest_ledger(client: RpcClient) -> int | None:
    """The RPC's latest ledger before the first batch: an entry modified after it changed while
    the sweep ran. None when the RPC does not say (no escrow is then read again)."""
    try:
        return (await client.call("getLatestLedger", None, GetLatestLedgerResponse)).sequence
    except RpcFault as fault:
        log.warning("getLatestLedger before the sweep failed: %s", fault)
        return None


# --- the balance side: what a custodial escrow holds --------------------------------------------

_NOT_CUSTODIAL: Final = "balance not read: the escrow's code does not hold the tokens (not custodial)"
_NOT_SAC: Final = "balance not read: the funding token is not a Stellar Asset Contract"


@dataclass(frozen=True, slots=True)
class _Custody:
    """An escrow read whole: whether it holds its tokens, and the balance key to read if so."""

    custodial: bool
    balance_key: str | None  # None: no balance to read, for the reason in ``note``
    note: str | None
    token_hash: bytes | None = None  # the balance entry's owner, which the sweep checks


_RECORD_ONLY: Final = _Custody(False, None, _NOT_CUSTODIAL)  # immutable: one serves every such escrow


def _custody(
    keys: Mapping[str, str],
    columnar: pl.DataFrame,
    outcomes: Mapping[str, _Outcome],
    token_keys: Mapping[str, str],
    settings: Settings,
) -> dict[str, _Custody]:
    """Per escrow read with its Escrow and FundingToken: custodial or not, and its balance key.
    ``columnar``: the escrows of ``keys`` decoded as columns (``_Sweep.columnar``).

    Custody is the instance's Wasm hash in ``RECONCILE_CUSTODIAL_WASM_HASHES`` when that is set,
    else the ``ProtocolFeeBps`` key the custodial code always stores (``Version`` did not change).
    """
    hashes = settings.custodial_wasm_hashes
    custody: dict[str, _Custody] = {}
    for contract_id, key in keys.items():
        outcome = outcomes.get(key)
        if type(outcome) is not _Found or type(outcome.value) is not EscrowInstance:
            continue
        value = outcome.value
        if value.escrow is None or value.funding_token is None:
            continue
        custodial = value.wasm_hash in hashes if hashes is not None else value.protocol_fee
        custody[contract_id] = (
            _custody_in(value.funding_token, value.contract_hash, outcomes, token_keys)
            if custodial
            else _RECORD_ONLY
        )
    if columnar.is_empty():
        return custody
    flags = (
        columnar.get_column("wasm_hash").is_in(list(hashes)).fill_null(False)
        if hashes is not None
        else columnar.get_column("protocol_fee")
    )
    custody.update(dict.fromkeys(columnar.get_column("contract_id").filter(~flags).to_list(), _RECORD_ONLY))
    held = columnar.filter(flags).select("contract_id", "funding_token", "contract_hash")
    for contract_id, token, raw_hash in held.iter_rows():
        custody[contract_id] = _custody_in(token, raw_hash, outcomes, token_keys)
    return custody


def _custody_in(
    token: str, contract_hash: bytes, outcomes: Mapping[str, _Outcome], token_keys: Mapping[str, str]
) -> _Custody:
    """A custodial escrow's custody: the balance key to read, or why there is none."""
    found = outcomes.get(token_keys[token])
    if type(found) is not _Found or type(found.value) is not TokenInstance:
        return _Custody(True, None, "balance not read: the funding token was not read")
    if not found.value.stellar_asset:
        return _Custody(True, None, _NOT_SAC)
    owner = found.value.contract_hash
    return _Custody(True, balance_key_of_hashes(owner, contract_hash), None, owner)


async def _read_balances(
    sweep: _Sweep, custody: Mapping[str, _Custody], keys: Mapping[str, str], guessed: Mapping[str, str]
) -> dict[str, str]:
    """Each custodial escrow's balance, read in one request with its instance so that both come
    from one ledger. Pairs already read so (``guessed`` the right token, and no fault split the
    request) stand; the rest are read again together. Returns escrow -> balance key."""
    pairs: dict[str, str] = {}
    flat: list[str] = []
    outcomes = sweep.outcomes
    # Every request of the sweep held whole pairs unless one was split or read again in part.
    whole = sweep.partial_fetches == 0
    for contract_id, found in custody.items():
        balance_key = found.balance_key
        if balance_key is None or found.token_hash is None:
            continue
        pairs[contract_id] = balance_key
        key = keys[contract_id]
        if guessed.get(key) == balance_key and (
            whole or _ledger_of(outcomes.get(key)) == _ledger_of(outcomes.get(balance_key))
        ):
            continue
        flat += (key, balance_key)
    if flat:
        await sweep.read(flat, _decode_pair_entry, pairs=True)
    # A pair split by the server (a fault answered with a split) came from two ledgers: read it again alone.
    for key, balance_key in zip(flat[::2], flat[1::2], strict=True):
        if _ledger_of(outcomes.get(key)) != _ledger_of(outcomes.get(balance_key)):
            await sweep.fetch([key, balance_key], _decode_pair_entry)
    return pairs


def _ledger_of(outcome: _Outcome | None) -> int | None:
    return None if outcome is None else outcome.latest_ledger


def _with_balances(
    frame: pl.DataFrame,
    ids: list[str],
    custody: Mapping[str, _Custody],
    pairs: Mapping[str, str],
    outcomes: Mapping[str, _Outcome],
) -> pl.DataFrame:
    """``frame`` (a row per contract of ``ids``, in order) with the balance columns of LEDGER, from
    the pair reads: built in the frame's row order and added beside its columns, as a join would
    copy every column (about 0.4 GB at 1M)."""
    custodial, balances, notes, modified, live = [], [], [], [], []
    for contract_id in ids:
        found = custody.get(contract_id)
        balance = note = last_modified = live_until = None
        if found is not None:
            if contract_id in pairs:
                outcome = outcomes.get(pairs[contract_id])
                if type(outcome) is _Found:
                    balance = str(outcome.value.balance.amount)  # type: ignore[union-attr]
                    last_modified, live_until = outcome.last_modified_ledger, outcome.live_until_ledger
                elif type(outcome) is _Missing:
                    balance = "0"  # no entry: the escrow has never held the token
                else:
                    note = f"balance {outcome.cause}" if isinstance(outcome, _Failed) else "balance not read"
            else:
                note = found.note
        custodial.append(None if found is None else found.custodial)
        balances.append(balance)
        notes.append(note)
        modified.append(last_modified)
        live.append(live_until)
    side = [
        chunked_like(_column(name, values), frame)
        for name, values in zip(BALANCE_COLUMNS, (custodial, balances, notes, modified, live), strict=True)
    ]
    return conform(frame.with_columns(side), LEDGER, "ledger")


def _token_symbol(outcome: _Outcome | None) -> str | None:
    if isinstance(outcome, _Found) and isinstance(outcome.value, TokenInstance):
        return outcome.value.symbol
    return None


def _funding_tokens(
    keys: Mapping[str, str], columnar: pl.DataFrame, outcomes: Mapping[str, _Outcome]
) -> list[str]:
    tokens = dict.fromkeys(columnar.get_column("funding_token").unique(maintain_order=True).to_list())
    for key in keys.values():
        outcome = outcomes.get(key)
        if type(outcome) is _Found:
            value = outcome.value
            if type(value) is EscrowInstance and value.escrow is not None and value.funding_token is not None:
                tokens[value.funding_token] = None
    return list(tokens)


@dataclass(frozen=True, slots=True)
class _Decimals:
    value: int | None
    source: str | None
    problem: str | None
    unread: bool = False  # the token's instance was not read (an outage): the escrow is not read either


def _token_decimals(token: str, outcome: _Outcome | None, settings: Settings) -> _Decimals:
    if isinstance(outcome, _Found) and isinstance(outcome.value, TokenInstance):
        if outcome.value.decimals is not None:
            return _Decimals(outcome.value.decimals, "metadata", None)
        why = outcome.value.problem or "no decimal in METADATA"
    elif isinstance(outcome, _Missing):
        why = "the token contract's instance is not on chain"
    elif isinstance(outcome, _Failed):
        if outcome.cause.startswith(UNAVAILABLE):
            return _Decimals(None, None, outcome.cause, unread=True)
        why = outcome.cause
    else:
        why = "the token was not read"
    configured = settings.token_decimals.get(token)
    if configured is not None:
        return _Decimals(configured, "configured", None)
    return _Decimals(None, None, unknown_decimals(token, why))


_COLUMNS: Final = tuple(name for name in LEDGER if name not in BALANCE_COLUMNS)  # what _frame builds
_NO_TOKEN: Final = "the escrow's instance storage has no FundingToken, so its token decimals are unknown"
Row = tuple[Any, ...]  # the LEDGER columns, in order


def _frame(
    ids: list[str],
    keys: Mapping[str, str],
    invalid: Mapping[str, str],
    outcomes: Mapping[str, _Outcome],
    decimals: Mapping[str, _Decimals],
    columnar: pl.DataFrame,
) -> pl.DataFrame:
    """The LEDGER columns but the balance ones, a row per contract of ``ids`` in order: the escrows
    decoded as columns (``columnar``, in the order of ``ids``) from those columns, the rest row by row."""
    chunks: list[pl.DataFrame] = []
    rows: list[Row] = []
    append = rows.append
    # The common row (an escrow read whole, with its funding token) is built inline: a call to
    # _row and its checks per escrow cost a tenth of a 100k sweep. Anything else goes to _row.
    last_token: str | None = None
    facts: tuple[str | None, int | None, str | None] = (None, None, None)
    read_status = "ok"
    for contract_id in ids:
        if len(rows) == _FRAME_CHUNK:
            # A frame per chunk of rows: a million row tuples at once were 0.7 GB of the peak.
            chunks.append(_rows_frame(rows))
            rows.clear()
        key = keys.get(contract_id)
        outcome = outcomes.get(key) if key is not None else None
        if type(outcome) is _Columnar:
            continue
        if type(outcome) is _Found:
            value, latest, last_modified, live_until = outcome
            if type(value) is EscrowInstance:
                _, escrow, token, principal, _, _ = value
                if escrow is not None and token is not None:
                    if token != last_token:
                        found = decimals[token]
                        last_token, facts = token, (found.problem, found.value, found.source)
                        read_status = "error" if found.unread else "ok"
                    invoice_id, funded, amount, target, status = escrow
                    append(
                        (
                            contract_id,
                            read_status,
                            facts[0],
                            invoice_id,
                            str(funded),
                            str(amount),
                            str(target),
                            status,
                            token,
                            None if principal is None else str(principal),
                            facts[1],
                            facts[2],
                            latest,
                            last_modified,
                            live_until,
                        )
                    )
                    continue
        append(_row(contract_id, keys, invalid, outcomes, decimals))
    chunks.append(_rows_frame(rows))
    # The balance columns are added by _with_balances.
    by_rows = pl.concat(chunks, rechunk=False)
    if columnar.is_empty():
        return by_rows
    if by_rows.height + columnar.height != len(ids):
        raise RuntimeError("ledger: the escrows decoded as columns are not those the sweep recorded so")
    by_columns = _columnar_rows(columnar, decimals)
    if by_rows.is_empty():
        return by_columns
    # Both kinds, interleaved as in ids: a join on the distinct contract ids puts them in order.
    both = pl.concat([by_rows, by_columns], rechunk=False)
    return pl.DataFrame({"contract_id": ids}).join(both, on="contract_id", how="left", maintain_order="left")


def _columnar_rows(columnar: pl.DataFrame, decimals: Mapping[str, _Decimals]) -> pl.DataFrame:
    """The rows _frame builds inline, for escrows decoded as columns: read whole, with a token."""
    tokens = columnar.get_column("funding_token").unique(maintain_order=True).to_list()
    facts = pl.DataFrame(
        [
            (token, "error" if found.unread else "ok", found.problem, found.value, found.source)
            for token in tokens
            for found in (decimals[token],)
        ],
        schema={name: LEDGER[name] for name in _TOKEN_FACTS},
        orient="row",
    )
    rows = columnar.join(facts, on="funding_token", how="left", maintain_order="left").select(_COLUMNS)
    # Stored once, as _frame's own rows store it (_REPEATED): decoded as a column, the token's
    # address was on every row, 53 MB at 1M escrows held from the sweep to classify's end.
    return rows.with_columns(chunked_like(stored_once(rows.get_column("funding_token")), rows))


_TOKEN_FACTS: Final = (
    "funding_token",
    "read_status",
    "read_error",
    "token_decimals",
    "token_decimals_source",
)


_FRAME_CHUNK: Final = 50_000


def _rows_frame(rows: list[Row]) -> pl.DataFrame:
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in _COLUMNS]
    return pl.DataFrame([_column(name, values) for name, values in zip(_COLUMNS, columns, strict=True)])


# Columns of a few distinct long values: the funding token, the balance note.
_REPEATED: Final = frozenset({"funding_token", "balance_note"})


def _column(name: str, values: Sequence[Any]) -> pl.Series:
    series = pl.Series(name, values, dtype=LEDGER[name])
    return stored_once(series) if name in _REPEATED else series


def _row(
    contract_id: str,
    keys: Mapping[str, str],
    invalid: Mapping[str, str],
    outcomes: Mapping[str, _Outcome],
    decimals: Mapping[str, _Decimals],
) -> Row:
    """One LEDGER row: contract_id, read_status, read_error, escrow_invoice_id, funded_amount,
    amount, funding_target, escrow_status, funding_token, distributed_principal, token_decimals,
    token_decimals_source, latest_ledger, last_modified_ledger, live_until_ledger."""
    if contract_id in invalid:
        return (contract_id, "error", invalid[contract_id], *(None,) * 12)
    outcome = outcomes.get(keys[contract_id]) or _Failed("not read (internal: no outcome recorded)")
    if isinstance(outcome, _Failed):
        return (contract_id, "error", outcome.cause, *(None,) * 9, outcome.latest_ledger, None, None)
    if isinstance(outcome, _Missing):
        return (contract_id, "no_instance", None, *(None,) * 9, outcome.latest_ledger, None, None)
    value = outcome.value
    assert isinstance(value, EscrowInstance)
    token = value.funding_token
    ledgers = (outcome.latest_ledger, outcome.last_modified_ledger, outcome.live_until_ledger)
    principal = _text(value.distributed_principal)
    escrow = value.escrow
    if escrow is None:
        return (contract_id, "no_escrow", None, *(None,) * 5, token, principal, None, None, *ledgers)
    read_status = "ok"
    if token is None:
        error, known, source = _NO_TOKEN, None, None
    else:
        found = decimals[token]
        error, known, source = found.problem, found.value, found.source
        read_status = "error" if found.unread else "ok"
    return (
        contract_id,
        read_status,
        error,
        escrow.invoice_id,
        str(escrow.funded_amount),
        str(escrow.amount),
        str(escrow.funding_target),
        escrow.status,
        token,
        principal,
        known,
        source,
        *ledgers,
    )


def _text(value: int | None) -> str | None:
    return None if value is None else str(value)
