"""The per-invoice ``simulateTransaction`` path: the seed's approach, kept as reference and fallback.

One simulated ``get_escrow`` call per contract, in sequence, as the seed did (plus
``get_funding_token`` when ``with_funding_token``), and the token's ``decimals`` once per distinct
token. With ``balance_token``, also that token's ``balance(escrow)`` per contract: the balance side
read the per-invoice way, which the benchmark compares the batched reader's balance pairs with.
A simulation cannot see the instance's code, so custody stays unknown (``custodial`` null) and the
balance is recorded, never held to the status invariants. It is never the default: it costs a
round trip and a full stellar-sdk transaction build per invoice, and a simulation reports neither
``lastModifiedLedgerSeq`` nor ``liveUntilLedgerSeq`` (those columns stay null; an archived
instance fails to simulate and becomes an ``error`` row).
Turn it on with ``settings.rpc_use_simulate`` only when ``getLedgerEntries`` is unavailable.
benchmarks/ledger_bench.py times it against the batched reader over the same emulator state.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

import polars as pl
from stellar_sdk import Account, Address, StrKey, TransactionBuilder, scval
from stellar_sdk import xdr as sx
from stellar_sdk.soroban_rpc import SimulateTransactionResponse
from tqdm.auto import tqdm

from reconcile_audit.compute.ledger.rpc import RetryPolicy, RpcClient, RpcFault, client_for, run_sync
from reconcile_audit.compute.ledger.types import (
    ContractIds,
    LedgerRead,
    LedgerStats,
    distinct_ids,
    unknown_decimals,
)
from reconcile_audit.compute.ledger.xdr import EntryDecodeError, contract_hash, escrow_fields_sdk, symbol_text
from reconcile_audit.compute.schemas import LEDGER, conform
from reconcile_audit.compute.settings import Settings

# Simulation needs a source account but never checks it; the all-zero key is a valid strkey.
_SOURCE: Final = StrKey.encode_ed25519_public_key(bytes(32))
_MISSING_INSTANCE: Final = "non-existing value for contract instance"


@dataclass(frozen=True, slots=True)
class _Simulated:
    value: sx.SCVal | None
    error: str | None
    latest_ledger: int | None


def read_ledger_simulated(
    contract_ids: ContractIds,
    settings: Settings,
    *,
    progress: bool = True,
    policy: RetryPolicy | None = None,
    with_funding_token: bool = True,
    balance_token: str | None = None,
) -> LedgerRead:
    """The LEDGER frame through per-invoice simulations (see the module docstring)."""
    ids = distinct_ids(contract_ids).to_list()
    return run_sync(
        lambda: _read(ids, settings, policy or RetryPolicy(), progress, with_funding_token, balance_token)
    )


async def _simulate(
    client: RpcClient, settings: Settings, contract_id: str, function: str, args: Sequence[sx.SCVal] = ()
) -> _Simulated:
    envelope = (
        TransactionBuilder(Account(_SOURCE, 0), settings.network_passphrase, base_fee=100)
        .append_invoke_contract_function_op(contract_id, function, list(args))
        .set_timeout(30)
        .build()
        .to_xdr()
    )
    try:
        answer = await client.call(
            "simulateTransaction", {"transaction": envelope}, SimulateTransactionResponse
        )
    except RpcFault as fault:
        return _Simulated(None, f"simulateTransaction {function} failed: {fault}", None)
    if answer.error is not None:
        return _Simulated(None, answer.error.splitlines()[0] + _detail(answer.error), answer.latest_ledger)
    if not answer.results:
        return _Simulated(None, f"simulateTransaction {function} returned no result", answer.latest_ledger)
    try:
        return _Simulated(sx.SCVal.from_xdr(answer.results[0].xdr), None, answer.latest_ledger)
    except Exception as exc:  # the generated decoder raises ValueError, EOFError, struct.error...
        return _Simulated(
            None, f"undecodable {function} result ({type(exc).__name__}: {exc})", answer.latest_ledger
        )


def _detail(error: str) -> str:
    """The diagnostic event's data string of a host error, which says what actually went wrong."""
    marker = 'data:"'
    if marker not in error:
        return ""
    return ": " + error.split(marker, 1)[1].split('"', 1)[0]


async def _read(
    ids: list[str],
    settings: Settings,
    policy: RetryPolicy,
    progress: bool,
    with_funding_token: bool,
    balance_token: str | None,
) -> LedgerRead:
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    ledgers: list[int] = []
    tokens: dict[str, tuple[int | None, str | None, str | None]] = {}
    entries = 0
    async with client_for(settings, policy) as client:
        for contract_id in tqdm(
            ids, desc="simulateTransaction", unit="invoice", disable=not progress, leave=False
        ):
            row: dict[str, Any] = {"contract_id": contract_id}
            rows.append(row)
            try:
                contract_hash(contract_id)
            except ValueError as exc:
                row.update(read_status="error", read_error=f"invalid contract address: {exc}")
                continue
            got = await _simulate(client, settings, contract_id, "get_escrow")
            row["latest_ledger"] = got.latest_ledger
            if got.latest_ledger is not None:
                ledgers.append(got.latest_ledger)
            if got.value is None:
                missing = got.error is not None and _MISSING_INSTANCE in got.error
                row.update(
                    read_status="no_instance" if missing else "error",
                    read_error=None if missing else got.error,
                )
                continue
            try:
                escrow = escrow_fields_sdk(got.value)
            except EntryDecodeError as exc:
                row.update(read_status="error", read_error=f"undecodable get_escrow result: {exc}")
                continue
            entries += 1
            row.update(
                read_status="ok",
                escrow_invoice_id=escrow.invoice_id,
                funded_amount=str(escrow.funded_amount),
                amount=str(escrow.amount),
                funding_target=str(escrow.funding_target),
                escrow_status=escrow.status,
            )
            if balance_token is not None:
                row.update(await _balance(client, settings, balance_token, contract_id))
            if not with_funding_token:
                continue
            token = await _simulate(client, settings, contract_id, "get_funding_token")
            if (
                token.value is None
                or token.value.type != sx.SCValType.SCV_ADDRESS
                or token.value.address is None
            ):
                row["read_error"] = (
                    f"funding token unknown: {token.error or 'get_funding_token is not an address'}"
                )
                continue
            row["funding_token"] = Address.from_xdr_sc_address(token.value.address).address
            if row["funding_token"] not in tokens:
                tokens[row["funding_token"]] = await _decimals(client, settings, row["funding_token"])
            decimals, source, problem = tokens[row["funding_token"]]
            row.update(token_decimals=decimals, token_decimals_source=source, read_error=problem)
        symbols: dict[str, str] = {}
        for token in dict.fromkeys([*tokens, *(settings.currency_tokens or {}).values()]):
            symbol = await _symbol(client, settings, token)
            if symbol is not None:
                symbols[token] = symbol
        counters = client.counters
    seconds = time.perf_counter() - started
    frame = pl.DataFrame({name: [row.get(name) for row in rows] for name in LEDGER}, schema=LEDGER)
    # Without balance_token the per-invoice path calls get_escrow only: what the escrow holds is
    # the batched reader's.
    frame = frame.with_columns(
        pl.when(
            (pl.col("read_status") == "ok")
            & pl.col("balance_note").is_null()
            & pl.col("chain_balance").is_null()
        )
        .then(pl.lit("balance not read: the simulateTransaction path reads escrows only"))
        .otherwise(pl.col("balance_note"))
        .alias("balance_note")
    )
    stats = LedgerStats.of_sweep(counters, batches=len(ids), entries=entries, seconds=seconds)
    return LedgerRead(
        conform(frame, LEDGER, "ledger"),
        min(ledgers, default=None),
        max(ledgers, default=None),
        stats,
        token_symbols=MappingProxyType(symbols),
    )


async def _balance(client: RpcClient, settings: Settings, token: str, holder: str) -> dict[str, Any]:
    """The LEDGER balance columns of ``holder`` from the simulated ``balance(holder)`` of ``token``."""
    got = await _simulate(client, settings, token, "balance", [Address(holder).to_xdr_sc_val()])
    value = got.value
    if value is None or value.type != sx.SCValType.SCV_I128 or value.i128 is None:
        return {"balance_note": f"balance not read: {got.error or 'balance is not an i128'}"}
    return {"chain_balance": str(scval.from_int128(value)), "balance_note": _CUSTODY_UNKNOWN}


_CUSTODY_UNKNOWN: Final = (
    "custody unknown on the simulateTransaction path: the balance is not held to the status"
)


async def _symbol(client: RpcClient, settings: Settings, token: str) -> str | None:
    """The token's ``symbol()``, to name it to people; None when it has none."""
    got = await _simulate(client, settings, token, "symbol")
    if got.value is None or got.value.type != sx.SCValType.SCV_STRING or got.value.str is None:
        return None
    return symbol_text(got.value.str.sc_string)


async def _decimals(
    client: RpcClient, settings: Settings, token: str
) -> tuple[int | None, str | None, str | None]:
    got = await _simulate(client, settings, token, "decimals")
    if got.value is not None and got.value.type == sx.SCValType.SCV_U32 and got.value.u32 is not None:
        return got.value.u32.uint32, "metadata", None
    configured = settings.token_decimals.get(token)
    if configured is not None:
        return configured, "configured", None
    why = got.error or "decimals is not a u32"
    return None, None, unknown_decimals(token, why)
