"""The ledger reader against the real emulator over real HTTP: shapes, faults, tokens, loops."""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import replace

import polars as pl
import pytest

from reconcile_audit.compute.ledger import (
    EarlySweep,
    LedgerRead,
    NetworkFacts,
    batched,
    preflight,
    read_ledger,
)
from reconcile_audit.compute.ledger.rpc import RetryPolicy, retry_after_seconds
from reconcile_audit.compute.ledger.simulate import read_ledger_simulated
from reconcile_audit.compute.schemas import LEDGER
from reconcile_audit.compute.settings import load_settings
from reconcile_audit.emulator import (
    FAULT_KINDS,
    STORAGE_SHAPES,
    Emulator,
    EscrowSpec,
    FaultPlan,
    LedgerState,
    TokenSpec,
    random_account_id,
    random_contract_id,
)
from reconcile_audit.errors import RpcPreflightError
from tests import factories

FAST = RetryPolicy(initial_backoff=0.001, max_backoff=0.02, jitter=0.002, max_retry_after=0.05)
LATEST = 1_000_000
TRANSIENT = tuple(k for k in FAULT_KINDS if k != "rpc_32602")
PERMANENT_ERRORS = (
    "http_429",
    "http_503",
    "http_504",
    "rpc_32001",
    "rpc_32003",
    "rpc_32603",
    "rpc_32602",
    "drop_connection",
    "non_json",
    "corrupt_xdr",
    "conflicting_entry",
    "http_429_text",
)

rng = random.Random(20261124)
TOKEN = TokenSpec(contract_id=random_contract_id(rng), decimals=7)
BARE_TOKEN = TokenSpec(contract_id=random_contract_id(rng), decimals=None)  # no METADATA
ADMIN = random_account_id(rng)


def escrow(n: int, **changes) -> EscrowSpec:
    values = {
        "contract_id": random_contract_id(rng),
        "invoice_id": f"INV_{n:05d}",
        "funded_amount": n * 10_000_000,
        "amount": 1_000_000_000,
        "funding_target": 1_000_000_000,
        "funding_token": TOKEN.contract_id,
        "admin": ADMIN,
        "sme_address": random_account_id(rng),
        "status": n % 5,
    }
    values.update(changes)
    return EscrowSpec(**values)


SHAPED = tuple(
    escrow(i, storage_shape=shape, distributed_principal=None if i % 2 else 10**9 + i)
    for i, shape in enumerate(STORAGE_SHAPES * 2)
)
SPECIAL = {
    "archived": escrow(100, live_until_ledger=0),
    "expiring": escrow(101, live_until_ledger=LATEST + 5),
    "no_escrow": escrow(102, has_escrow=False),
    "other_invoice": escrow(103, invoice_id="SOMEONE_ELSE"),
    "bare_token": escrow(104, funding_token=BARE_TOKEN.contract_id),
    "i128_limits": escrow(105, funded_amount=-(2**127), amount=2**127 - 1, funding_target=-1),
}
BULK = tuple(escrow(200 + i) for i in range(420))
ESCROWS = SHAPED + tuple(SPECIAL.values()) + BULK
STATE = LedgerState(latest_ledger=LATEST, escrows=ESCROWS, tokens=(TOKEN, BARE_TOKEN))
MISSING = random_contract_id(rng)  # a valid address with no instance on chain
ALL_IDS = [e.contract_id for e in ESCROWS] + [MISSING]


def settings_for(url: str, **params):
    base = {"rpc_url": url, "rpc_max_retries": 10, "rpc_timeout_seconds": 5, "rpc_concurrency": 4}
    return factories.settings(**{**base, **params})


def read(emu: Emulator, ids=None, policy: RetryPolicy = FAST, **params) -> LedgerRead:
    return read_ledger(
        ALL_IDS if ids is None else ids, settings_for(emu.url, **params), progress=False, policy=policy
    )


def rows(result: LedgerRead) -> dict[str, dict]:
    return {row["contract_id"]: row for row in result.frame.iter_rows(named=True)}


def expect_ok(row: dict, spec: EscrowSpec) -> None:
    assert row["read_status"] == "ok", row
    assert row["escrow_invoice_id"] == spec.invoice_id
    assert row["funded_amount"] == str(spec.funded_amount)
    assert row["amount"] == str(spec.amount)
    assert row["funding_target"] == str(spec.funding_target)
    assert row["escrow_status"] == spec.status
    assert row["distributed_principal"] == (
        None if spec.distributed_principal is None else str(spec.distributed_principal)
    )
    assert row["last_modified_ledger"] == spec.last_modified_ledger
    assert row["live_until_ledger"] == spec.live_until_ledger
    assert row["latest_ledger"] == LATEST


@pytest.fixture(scope="module")
def clean() -> LedgerRead:
    with Emulator(STATE) as emu:
        return read(emu)


def test_frame_schema_and_one_row_per_distinct_id(clean: LedgerRead) -> None:
    assert clean.frame.schema == LEDGER
    assert clean.frame["contract_id"].to_list() == ALL_IDS
    with Emulator(STATE) as emu:
        doubled = read(emu, ids=[*ALL_IDS[:5], *ALL_IDS[:5], None, ""])
    assert doubled.frame["contract_id"].to_list() == ALL_IDS[:5]


@pytest.mark.parametrize("index", range(len(SHAPED)))
def test_every_storage_shape_round_trips(clean: LedgerRead, index: int) -> None:
    spec = SHAPED[index]
    row = rows(clean)[spec.contract_id]
    if spec.storage_shape == "no_funding_token":
        assert row["read_status"] == "ok" and row["funding_token"] is None
        assert row["token_decimals"] is None and "no FundingToken" in row["read_error"]
        row = {**row, "read_error": None}
    else:
        assert row["funding_token"] == TOKEN.contract_id
        assert (row["token_decimals"], row["token_decimals_source"], row["read_error"]) == (
            7,
            "metadata",
            None,
        )
    expect_ok(row, spec)


def test_special_escrows(clean: LedgerRead) -> None:
    got = rows(clean)
    expect_ok(got[SPECIAL["archived"].contract_id], SPECIAL["archived"])
    assert got[SPECIAL["archived"].contract_id]["live_until_ledger"] == 0
    expect_ok(got[SPECIAL["expiring"].contract_id], SPECIAL["expiring"])
    expect_ok(got[SPECIAL["i128_limits"].contract_id], SPECIAL["i128_limits"])
    # The reader reports what the escrow stores; classify decides that a differing id is a finding.
    assert got[SPECIAL["other_invoice"].contract_id]["escrow_invoice_id"] == "SOMEONE_ELSE"
    no_escrow = got[SPECIAL["no_escrow"].contract_id]
    assert no_escrow["read_status"] == "no_escrow" and no_escrow["funded_amount"] is None
    missing = got[MISSING]
    assert missing["read_status"] == "no_instance" and missing["latest_ledger"] == LATEST


def test_token_without_metadata_and_no_fallback(clean: LedgerRead) -> None:
    row = rows(clean)[SPECIAL["bare_token"].contract_id]
    assert (
        row["read_status"] == "ok" and row["token_decimals"] is None and row["token_decimals_source"] is None
    )
    assert BARE_TOKEN.contract_id in row["read_error"] and "METADATA" in row["read_error"]
    assert "RECONCILE_TOKEN_DECIMALS" in row["read_error"]


def test_token_without_metadata_uses_configured_decimals() -> None:
    ids = [SPECIAL["bare_token"].contract_id, SHAPED[0].contract_id]
    with Emulator(STATE) as emu:
        result = read(emu, ids=ids, token_decimals={BARE_TOKEN.contract_id: 6, TOKEN.contract_id: 2})
        stats = emu.stats
    bare, standard = (rows(result)[i] for i in ids)
    assert (bare["token_decimals"], bare["token_decimals_source"], bare["read_error"]) == (
        6,
        "configured",
        None,
    )
    # METADATA wins over configuration when the chain has it.
    assert (standard["token_decimals"], standard["token_decimals_source"]) == (7, "metadata")
    assert stats.requests["getLedgerEntries"] == 2  # the escrows, then each distinct token once


def test_summary_stats_and_ledger_range(clean: LedgerRead) -> None:
    s = clean.stats
    # getLatestLedger (the sweep's start), 3 batches of escrows, 1 of the token
    assert s.batches == 3 + 1 and s.requests == 1 + 4 and s.retries == 0
    assert s.entries == len(ESCROWS) + 2 and s.entries_per_second > 0
    assert (clean.ledger_min, clean.ledger_max) == (LATEST, LATEST)
    line = clean.summary_line()
    assert line.startswith(f"ledger: {len(ALL_IDS):,} escrows in 5 requests (0 retries), ")
    assert clean.sweep_start_ledger == LATEST
    assert line.endswith(f"entries/s, ledgers {LATEST}-{LATEST}")


def test_a_sweep_spans_ledgers() -> None:
    with Emulator(STATE, ledger_step_per_request=1) as emu:
        result = read(emu, rpc_concurrency=1)
    assert (result.ledger_min, result.ledger_max) == (LATEST, LATEST + 3)
    # The first batch of escrows, then their token (LATEST + 1), then the other two batches.
    assert sorted(result.frame["latest_ledger"].unique().to_list()) == [LATEST, LATEST + 2, LATEST + 3]


def test_never_more_than_200_keys_per_request() -> None:
    settings = settings_for("http://unused").with_changes(rpc_batch_size=500)  # bypasses load_settings' check
    with Emulator(STATE) as emu:
        result = read_ledger(ALL_IDS, settings.with_changes(rpc_url=emu.url), progress=False, policy=FAST)
        stats = emu.stats
    assert stats.faults_total == 0 and (result.frame["read_status"] == "error").sum() == 0
    assert stats.requests["getLedgerEntries"] == -(-len(ALL_IDS) // 200) + 1
    assert stats.keys_requested == len(ALL_IDS) + 2


def test_invalid_address_is_an_error_row_and_never_sent() -> None:
    good = SHAPED[0].contract_id
    bad = good[:-1] + ("A" if good[-1] != "A" else "B")  # checksum no longer matches
    with Emulator(STATE) as emu:
        result = read(emu, ids=[bad, good, "GABC"])
        stats = emu.stats
    got = rows(result)
    assert got[bad]["read_status"] == "error" and "checksum" in got[bad]["read_error"]
    assert got["GABC"]["read_status"] == "error" and "invalid contract address" in got["GABC"]["read_error"]
    assert got[good]["read_status"] == "ok"
    assert stats.keys_requested == 2  # the good escrow and its token


# --- faults ----------------------------------------------------------------------------------


def comparable(result: LedgerRead) -> pl.DataFrame:
    return result.frame.drop("latest_ledger")


@pytest.mark.parametrize("kind", TRANSIENT)
def test_each_transient_fault_alone_leaves_no_error(clean: LedgerRead, kind: str) -> None:
    plan = FaultPlan(rate=0.5, kinds=(kind,), seed=3, retry_after_seconds=0.01, delay_seconds=0.02)
    with Emulator(STATE, plan) as emu:
        result = read(emu, rpc_batch_size=40)
        injected = emu.stats.faults.get(kind, 0)
    assert injected > 0, "the fault must actually have been injected"
    assert comparable(result).equals(comparable(clean))
    if kind not in ("delay", "unrequested_entry"):
        assert result.stats.retries > 0 or result.stats.faults_by_kind
    if kind == "unrequested_entry":
        assert result.stats.faults_by_kind["unrequested_entry"] == injected


@pytest.mark.slow
def test_twenty_percent_mixed_transient_faults_end_with_zero_errors(clean: LedgerRead) -> None:
    plan = FaultPlan(rate=0.2, kinds=TRANSIENT, seed=11, retry_after_seconds=0.01, delay_seconds=0.02)
    with Emulator(STATE, plan) as emu:
        result = read(emu, rpc_batch_size=25)
        injected = emu.stats.faults_total
    assert injected >= 5
    assert (result.frame["read_status"] == "error").sum() == 0
    assert comparable(result).equals(comparable(clean))


@pytest.mark.parametrize("kind", PERMANENT_ERRORS)
def test_poisoned_contracts_alone_become_errors(clean: LedgerRead, kind: str) -> None:
    poisoned = {BULK[7].contract_id: kind, BULK[300].contract_id: kind}
    with Emulator(STATE, FaultPlan(poisoned=poisoned, retry_after_seconds=0.01)) as emu:
        result = read(emu, rpc_max_retries=2)
    errors = result.frame.filter(pl.col("read_status") == "error")
    assert sorted(errors["contract_id"].to_list()) == sorted(poisoned)
    assert all(errors["read_error"].str.len_chars() > 10)
    innocent = comparable(result).filter(~pl.col("contract_id").is_in(list(poisoned)))
    assert innocent.equals(comparable(clean).filter(~pl.col("contract_id").is_in(list(poisoned))))


def test_poisoned_client_error_is_never_retried() -> None:
    poisoned = {BULK[0].contract_id: "rpc_32602"}
    with Emulator(STATE, FaultPlan(poisoned=poisoned)) as emu:
        result = read(emu, ids=[BULK[0].contract_id])
        stats = emu.stats
    assert stats.requests["getLedgerEntries"] == 1 and result.stats.retries == 0
    assert "-32602" in rows(result)[BULK[0].contract_id]["read_error"]


@pytest.mark.parametrize("kind", ["delay", "unrequested_entry"])
def test_poisoned_harmless_faults_cost_no_rows(clean: LedgerRead, kind: str) -> None:
    poisoned = {BULK[7].contract_id: kind}
    with Emulator(STATE, FaultPlan(poisoned=poisoned, delay_seconds=0.05)) as emu:
        result = read(emu)
    assert comparable(result).equals(comparable(clean))


def test_timeouts_are_retried_then_only_the_slow_contract_fails(clean: LedgerRead) -> None:
    slow = BULK[9].contract_id
    policy = RetryPolicy(initial_backoff=0.001, max_backoff=0.01, jitter=0.0, bisect_retries=0)
    with Emulator(STATE, FaultPlan(poisoned={slow: "delay"}, delay_seconds=0.6)) as emu:
        ids = [e.contract_id for e in BULK[:16]]
        result = read(emu, ids=ids, policy=policy, rpc_timeout_seconds=0.2, rpc_max_retries=1)
    got = rows(result)
    assert got[slow]["read_status"] == "error" and "timeout" in got[slow]["read_error"]
    assert sum(r["read_status"] == "ok" for r in got.values()) == 15
    assert result.stats.faults_by_kind["timeout"] >= 2


def test_retry_after_is_honoured() -> None:
    plan = FaultPlan(rate=1.0, kinds=("http_429",), retry_after_seconds=0.4)
    policy = RetryPolicy(initial_backoff=0.001, max_backoff=0.001, jitter=0.0, max_retry_after=5)
    with Emulator(STATE, plan) as emu:
        started = time.monotonic()
        result = read(emu, ids=[BULK[0].contract_id], policy=policy, rpc_max_retries=1)
        elapsed = time.monotonic() - started
    assert result.stats.retries == 1 and "http_429" in rows(result)[BULK[0].contract_id]["read_error"]
    assert elapsed >= 0.4  # it waited the server's Retry-After, not its own 1 ms backoff


def test_a_dead_rpc_trips_the_breaker_instead_of_waiting_out_every_batch() -> None:
    plan = FaultPlan(rate=1.0, kinds=("http_503",))
    with Emulator(STATE, plan) as emu:
        result = read(emu, rpc_batch_size=10, rpc_max_retries=1, rpc_concurrency=1)
        sent = emu.stats.requests["getLedgerEntries"]
    assert (result.frame["read_status"] == "error").all()
    assert sent < 400  # without the breaker: 44 batches bisected down to single keys, thousands of requests
    assert "in a row" in result.frame["read_error"][-1] and "http_503" in result.frame["read_error"][-1]
    # The outage is named as such, and the read cannot stand as a result.
    assert result.frame["read_error"].str.starts_with("not read: the RPC was unavailable").all()
    assert result.breaker_opened and result.read_share == 0.0
    assert "unavailable during the sweep" in (result.incomplete_because(0.99) or "")


def test_an_unreadable_token_is_an_outage_not_a_decimals_setting() -> None:
    """The escrows are read, their token's instance is not: those escrows are not read either."""
    plan = FaultPlan(poisoned={TOKEN.contract_id: "http_503"})
    with Emulator(STATE, plan) as emu:
        result = read(emu, ids=[SHAPED[0].contract_id], rpc_max_retries=1)
    (row,) = result.frame.iter_rows(named=True)
    assert row["read_status"] == "error" and row["token_decimals"] is None
    assert (
        row["read_error"].startswith("not read: the RPC was unavailable") and "http_503" in row["read_error"]
    )
    assert "RECONCILE_TOKEN_DECIMALS" not in row["read_error"]
    assert result.read_share == 0.0 and result.incomplete_because(0.99) is not None


def test_a_full_read_is_complete(clean: LedgerRead) -> None:
    assert not clean.breaker_opened
    errors = clean.frame.filter(pl.col("read_status") == "error").height
    assert clean.read_share == (clean.frame.height - errors) / clean.frame.height
    assert clean.incomplete_because(clean.read_share) is None
    # Requiring every escrow read makes it incomplete exactly when one was not.
    assert (clean.incomplete_because(1.0) is not None) == (errors > 0)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("2", 2.0), ("0.05", 0.05), (" 7 ", 7.0), ("-3", 0.0), ("soon", None), (None, None), ("", None)],
)
def test_retry_after_parsing(value, expected) -> None:
    assert retry_after_seconds(value) == expected


def test_retry_after_http_date() -> None:
    assert retry_after_seconds("Tue, 24 Nov 2026 05:00:10 GMT", now=1795496400.0) == pytest.approx(10.0)


# --- preflight, event loops, the simulate fallback --------------------------------------------


def test_preflight_passes_on_the_right_network() -> None:
    with Emulator(STATE) as emu:
        facts = preflight(settings_for(emu.url))
    assert facts == NetworkFacts(STATE.network_passphrase, STATE.protocol_version, LATEST)


def test_preflight_refuses_the_wrong_network() -> None:
    with Emulator(STATE) as emu, pytest.raises(RpcPreflightError, match="wrong network") as raised:
        preflight(settings_for(emu.url, network_passphrase="Public Global Stellar Network ; September 2015"))
    assert raised.value.exit_code == 2


def test_preflight_refuses_an_unreachable_rpc() -> None:
    with Emulator(STATE) as emu:
        url = emu.url
    with pytest.raises(RpcPreflightError, match="not usable"):
        preflight(settings_for(url, rpc_max_retries=1), policy=FAST)


def test_preflight_needs_a_url() -> None:
    with pytest.raises(RpcPreflightError, match="SOROBAN_RPC_URL"):
        preflight(load_settings({}, {}))


def test_read_ledger_inside_a_running_event_loop(clean: LedgerRead) -> None:
    async def notebook_cell() -> tuple[LedgerRead, NetworkFacts]:
        asyncio.get_running_loop()  # as in a Jupyter kernel: asyncio.run would refuse here
        with Emulator(STATE) as emu:
            return read(emu), preflight(settings_for(emu.url))

    result, facts = asyncio.run(notebook_cell())
    assert comparable(result).equals(comparable(clean)) and facts.latest_ledger == LATEST


def test_progress_bar_does_not_change_the_result(clean: LedgerRead, capsys) -> None:
    with Emulator(STATE) as emu:
        result = read_ledger(ALL_IDS, settings_for(emu.url), progress=True, policy=FAST)
    assert comparable(result).equals(comparable(clean))
    assert "getLedgerEntries" in capsys.readouterr().err


def test_simulate_fallback_gives_the_same_escrows(clean: LedgerRead) -> None:
    picks = [*SHAPED[:5], SPECIAL["no_escrow"], SPECIAL["bare_token"], SPECIAL["other_invoice"]]
    ids = [e.contract_id for e in picks] + [MISSING]
    with Emulator(STATE) as emu:
        settings = settings_for(emu.url, rpc_use_simulate=True)
        result = read_ledger(ids, settings, progress=False, policy=FAST)
        stats = emu.stats
    assert "getLedgerEntries" not in stats.requests
    got, swept = rows(result), rows(clean)
    same = ["read_status", "escrow_invoice_id", "funded_amount", "amount", "funding_target", "escrow_status"]
    for spec in [*picks[:5], SPECIAL["other_invoice"]]:
        row = got[spec.contract_id]
        assert {c: row[c] for c in same} == {c: swept[spec.contract_id][c] for c in same}
        assert row["live_until_ledger"] is None  # a simulation does not say
        if spec.storage_shape == "no_funding_token":
            assert row["token_decimals"] is None and "funding token unknown" in row["read_error"]
        else:
            assert (row["funding_token"], row["token_decimals"]) == (TOKEN.contract_id, 7)
    assert got[MISSING]["read_status"] == "no_instance"
    assert got[SPECIAL["no_escrow"].contract_id]["read_status"] == "error"
    assert got[SPECIAL["bare_token"].contract_id]["token_decimals"] is None
    # get_escrow for each id, get_funding_token for each of the 7 escrows read, then decimals and
    # symbol once per token
    assert stats.requests["simulateTransaction"] == len(ids) + 7 + 2 + 2
    assert result.token_symbols == {TOKEN.contract_id: "USDC"}


def test_simulate_reference_path_is_one_call_per_invoice() -> None:
    ids = [e.contract_id for e in BULK[:10]]
    with Emulator(STATE) as emu:
        result = read_ledger_simulated(ids, settings_for(emu.url), progress=False, with_funding_token=False)
        stats = emu.stats
    assert stats.requests["simulateTransaction"] == 10
    assert (result.frame["read_status"] == "ok").all()


def test_nothing_to_read_sends_nothing() -> None:
    with Emulator(STATE) as emu:
        result = read(emu, ids=[])
        stats = emu.stats
    assert result.frame.height == 0 and result.frame.schema == LEDGER
    assert (result.ledger_min, result.ledger_max, result.stats.requests) == (None, None, 0)
    assert "getLedgerEntries" not in stats.requests
    assert result.summary_line().endswith("no ledger read")


def test_busy_answers_split_the_batch() -> None:
    plan = FaultPlan(rate=1.0, kinds=("rpc_32001",), seed=5)
    with Emulator(STATE, plan) as emu:
        result = read(emu, ids=[e.contract_id for e in BULK[:8]], rpc_max_retries=3)
        stats = emu.stats
    # Every request is refused, so the batch halves down to single keys, which are then retried.
    assert stats.requests["getLedgerEntries"] >= 1 + 2 + 4 + 8
    assert (result.frame["read_status"] == "error").all()
    assert result.frame["read_error"].str.contains("-32001").all()


def test_preflight_retries_transient_faults() -> None:
    plan = FaultPlan(
        rate=0.6, kinds=TRANSIENT, seed=2, methods=("getNetwork", "getHealth"), retry_after_seconds=0.01
    )
    with Emulator(STATE, plan) as emu:
        facts = preflight(settings_for(emu.url), policy=FAST)
        injected = emu.stats.faults_total
    assert facts.latest_ledger == LATEST and injected > 0


def test_preflight_gives_up_on_a_client_error() -> None:
    plan = FaultPlan(rate=1.0, kinds=("rpc_32602",), methods=("getNetwork",))
    with Emulator(STATE, plan) as emu, pytest.raises(RpcPreflightError, match="-32602"):
        preflight(settings_for(emu.url), policy=FAST)


def test_summary_is_logged_at_info(caplog) -> None:
    with Emulator(STATE) as emu, caplog.at_level("INFO", logger="reconcile_audit.compute.ledger"):
        result = read(emu, ids=ALL_IDS[:3])
    assert result.summary_line() in caplog.messages


def test_token_symbols_include_the_tokens_currencies_must_be_funded_in() -> None:
    """A wrong-token finding names both tokens: the mapped one is read even when no escrow holds it."""
    euro = TokenSpec(contract_id=random_contract_id(random.Random(11)), decimals=6, symbol="EURC")
    state = replace(STATE, tokens=(*STATE.tokens, euro))
    mapping = json.dumps({"USDC": TOKEN.contract_id, "EUR": euro.contract_id})
    for simulate in (False, True):
        with Emulator(state) as emu:
            result = read(
                emu,
                ids=[e.contract_id for e in SHAPED[:3]],
                currency_tokens=mapping,
                rpc_use_simulate=simulate,
            )
        assert result.token_symbols == {TOKEN.contract_id: "USDC", euro.contract_id: "EURC"}, simulate


# --- the balance side (issue 11): what a custodial escrow holds --------------------------------

WASM_TOKEN = TokenSpec(contract_id=random_contract_id(rng), decimals=7, stellar_asset=False, symbol="WUSD")
HOLDERS = {
    "held": escrow(300, custodial=True, token_balance=3_000_000_000, balance_last_modified_ledger=LATEST - 9),
    "short": escrow(301, custodial=True, token_balance=1),
    "no_entry": escrow(302, custodial=True),
    "record_only": escrow(303, token_balance=5),  # pre-custody code: its balance is not its money
    "wasm_token": escrow(304, custodial=True, funding_token=WASM_TOKEN.contract_id, token_balance=7),
    "archived_balance": escrow(305, custodial=True, token_balance=9, balance_live_until_ledger=0),
}
HOLDER_STATE = LedgerState(
    latest_ledger=LATEST, escrows=(*HOLDERS.values(), *BULK[:50]), tokens=(TOKEN, BARE_TOKEN, WASM_TOKEN)
)


def _rows(result: LedgerRead) -> dict[str, dict]:
    by_id = {row["contract_id"]: row for row in result.frame.iter_rows(named=True)}
    return {name: by_id[spec.contract_id] for name, spec in HOLDERS.items()}


@pytest.mark.parametrize("batch_size", [200, 5])
def test_custodial_escrows_are_read_with_their_balance(batch_size: int) -> None:
    ids = [e.contract_id for e in HOLDER_STATE.escrows]
    with Emulator(HOLDER_STATE, ledger_step_per_request=1) as emu:
        result = read(emu, ids=ids, rpc_batch_size=batch_size)
    assert result.frame.schema == LEDGER
    rows = _rows(result)
    assert (rows["held"]["custodial"], rows["held"]["chain_balance"], rows["held"]["balance_note"]) == (
        True,
        "3000000000",
        None,
    )
    assert rows["held"]["balance_last_modified_ledger"] == LATEST - 9
    assert rows["short"]["chain_balance"] == "1"
    assert rows["no_entry"]["chain_balance"] == "0"  # no Balance entry: it has never held the token
    assert (rows["record_only"]["custodial"], rows["record_only"]["chain_balance"]) == (False, None)
    assert "not custodial" in rows["record_only"]["balance_note"]
    assert rows["wasm_token"]["chain_balance"] is None
    assert (
        rows["wasm_token"]["balance_note"]
        == "balance not read: the funding token is not a Stellar Asset Contract"
    )
    assert rows["archived_balance"]["balance_live_until_ledger"] == 0
    # Every other escrow (the pre-custody bulk) carries no balance and says why.
    bulk = result.frame.filter(~pl.col("contract_id").is_in([s.contract_id for s in HOLDERS.values()]))
    assert bulk["custodial"].eq(False).all() and bulk["chain_balance"].is_null().all()


def test_balances_are_read_beside_their_instances_in_one_pass() -> None:
    """The first batch names the token most escrows hold: every later escrow is read with its
    balance key in the same request, each pair whole in one batch (an odd batch size, a new ledger
    per request: a split pair would be read again, and cost requests). Only the first batch, and
    an escrow funded in another token, are read a second time as pairs."""
    euro = TokenSpec(contract_id=random_contract_id(random.Random(12)), decimals=6, symbol="EURC")
    held = [escrow(400 + n, custodial=True, token_balance=n * 10_000_000) for n in range(22)]
    other = escrow(450, custodial=True, funding_token=euro.contract_id, token_balance=3)
    escrows = (*held[:12], other, *held[12:])  # the euro escrow is outside the first batch
    state = LedgerState(latest_ledger=LATEST, escrows=escrows, tokens=(TOKEN, euro))
    with Emulator(state, ledger_step_per_request=1) as emu:
        result = read(emu, ids=[e.contract_id for e in escrows], rpc_batch_size=5)
        stats = emu.stats
    by_id = rows(result)
    assert [by_id[e.contract_id]["chain_balance"] for e in escrows] == [str(e.token_balance) for e in escrows]
    # 5 instances; USDC; 18 pairs in batches of 2 pairs; EURC; the first 5 and the euro escrow again as pairs.
    assert stats.keys_requested == 5 + 1 + 36 + 1 + 12
    assert stats.requests["getLedgerEntries"] == 1 + 1 + 9 + 1 + 3


def test_custody_follows_the_configured_wasm_hashes_when_set() -> None:
    from reconcile_audit.emulator.state import ESCROW_WASM_HASH

    ids = [s.contract_id for s in HOLDERS.values()]
    with Emulator(HOLDER_STATE) as emu:
        # Only the pre-custody code is listed: the ProtocolFeeBps heuristic no longer applies.
        result = read(emu, ids=ids, custodial_wasm_hashes=ESCROW_WASM_HASH.hex())
    rows = _rows(result)
    assert rows["record_only"]["custodial"] is True and rows["record_only"]["chain_balance"] == "5"
    assert rows["held"]["custodial"] is False and rows["held"]["chain_balance"] is None


def test_a_wasm_hash_list_that_is_not_hex_names_the_variable() -> None:
    from reconcile_audit.errors import ConfigError

    with pytest.raises(ConfigError, match="RECONCILE_CUSTODIAL_WASM_HASHES"):
        load_settings({}, {"RECONCILE_CUSTODIAL_WASM_HASHES": "abc"})


def test_the_per_invoice_path_reads_the_same_balances_when_asked() -> None:
    """The benchmark's per-invoice baseline with balances: one simulated balance(escrow) per
    escrow, the same amounts the batched pairs read, with custody left unknown."""
    held = [s for s in HOLDERS.values() if s.funding_token == TOKEN.contract_id]
    ids = [s.contract_id for s in held]
    with Emulator(HOLDER_STATE) as emu:
        batched = rows(read(emu, ids=ids, custodial_wasm_hashes=""))
        simulated = read_ledger_simulated(
            ids,
            settings_for(emu.url),
            progress=False,
            with_funding_token=False,
            balance_token=TOKEN.contract_id,
        )
        calls = emu.stats.requests["simulateTransaction"]
    by_id = rows(simulated)
    for spec in held:
        expected = str(spec.token_balance or 0)
        assert by_id[spec.contract_id]["chain_balance"] == expected, spec.invoice_id
        assert by_id[spec.contract_id]["custodial"] is None
        if batched[spec.contract_id]["custodial"]:
            assert batched[spec.contract_id]["chain_balance"] == expected
    assert calls == 2 * len(held)  # get_escrow and balance, per escrow


def test_requests_in_flight_halve_on_429_and_grow_back() -> None:
    from reconcile_audit.compute.ledger.rpc import AdaptiveLimit

    async def scenario() -> list[int]:
        limit = AdaptiveLimit(16)
        seen = [limit.limit]
        for throttled in (True, True):
            await limit.acquire()
            limit.release(throttled=throttled)
            seen.append(limit.limit)
        for _ in range(4):  # four answers in a row at a limit of 4: one more
            await limit.acquire()
            limit.release(throttled=False)
        seen.append(limit.limit)
        # Never more in flight than the limit: a fifth waiter waits for a release.
        for _ in range(5):
            await limit.acquire()
            limit.release(throttled=False)
        held = [asyncio.create_task(limit.acquire()) for _ in range(limit.limit + 1)]
        await asyncio.sleep(0.01)
        seen.append(sum(task.done() for task in held))
        limit.release(throttled=False)
        await asyncio.sleep(0.01)
        seen.append(sum(task.done() for task in held))
        seen.append(limit.lowest)
        return seen

    assert asyncio.run(scenario()) == [16, 8, 4, 5, 6, 7, 4]


def test_a_throttling_rpc_gets_fewer_requests_and_the_run_says_so(caplog: pytest.LogCaptureFixture) -> None:
    plan = FaultPlan(rate=0.2, kinds=("http_429",), seed=5, retry_after_seconds=0.01)
    with Emulator(STATE, faults=plan) as emu:
        result = read(emu, rpc_concurrency=8, rpc_batch_size=2)
    assert not (result.frame["read_status"] == "error").any()  # every escrow read in the end
    assert result.stats.faults_by_kind["http_429"] > 0
    assert "answered 429 (too many requests): requests in flight were cut from 8" in caplog.text


@pytest.mark.parametrize("chunk", [3, 7, 50])
def test_the_frame_built_in_chunks_is_the_frame_built_whole(
    clean: LedgerRead, monkeypatch, chunk: int
) -> None:
    """At 1M escrows the frame is built a chunk of rows at a time, with the balance columns
    chunked alike (columns chunked apart would make polars copy the frame): any chunk size gives
    the same rows, balances included, in the same order."""
    monkeypatch.setattr(batched, "_FRAME_CHUNK", chunk)
    with Emulator(STATE) as emu:
        chunked = read(emu)
    assert chunked.frame.equals(clean.frame)
    assert set(chunked.frame.n_chunks("all")) == {chunked.frame.n_chunks()}
    ids = [e.contract_id for e in HOLDER_STATE.escrows]
    with Emulator(HOLDER_STATE) as emu:
        held = read(emu, ids=ids)
    monkeypatch.setattr(batched, "_FRAME_CHUNK", 10**9)
    with Emulator(HOLDER_STATE) as emu:
        whole = read(emu, ids=ids)
    assert held.frame.equals(whole.frame) and held.frame.get_column("chain_balance").drop_nulls().len() > 0
    assert set(held.frame.n_chunks("all")) == {held.frame.n_chunks()}  # every column chunked alike


def test_chunks_read_what_one_sweep_reads(clean: LedgerRead, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sweep in chunks (issue 14: each chunk's objects become columns before the next is read)
    gives the same frame as one sweep, balances and tokens included, in the same order."""
    custodial_state = LedgerState(
        latest_ledger=LATEST,
        escrows=tuple(replace(e, custodial=True, token_balance=e.funded_amount) for e in BULK[:50]) + SHAPED,
        tokens=(TOKEN, BARE_TOKEN),
    )
    ids = [e.contract_id for e in custodial_state.escrows] + [MISSING, "not-an-address"]
    with Emulator(custodial_state) as emu:
        whole = read(emu, ids=ids)
        monkeypatch.setattr(batched, "SWEEP_CHUNK", 7)
        chunked = read(emu, ids=ids)
        tokens_read = emu.stats.requests["getLedgerEntries"]
    assert chunked.frame.equals(whole.frame)
    assert chunked.frame.get_column("chain_balance").drop_nulls().len() == 50
    assert chunked.token_symbols == whole.token_symbols
    assert (chunked.ledger_min, chunked.ledger_max) == (whole.ledger_min, whole.ledger_max)
    assert chunked.stats.entries == whole.stats.entries
    assert tokens_read > 0
    # Across chunks the whole frame keeps the input order: 66 rows, then the missing and the invalid one.
    assert chunked.frame.get_column("contract_id").to_list() == ids


def test_after_the_breaker_opens_later_chunks_are_not_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batched, "SWEEP_CHUNK", 50)
    plan = FaultPlan(rate=1.0, kinds=("http_503",))
    with Emulator(STATE, plan) as emu:
        result = read(emu, rpc_batch_size=10, rpc_max_retries=1, rpc_concurrency=1)
        sent = emu.stats.requests["getLedgerEntries"]
    assert (result.frame["read_status"] == "error").all() and result.breaker_opened
    assert sent < 400


def by_contract(result: LedgerRead) -> pl.DataFrame:
    return comparable(result).sort("contract_id")


def test_an_early_sweep_stands_for_what_it_read_and_the_rest_is_read_after(clean: LedgerRead) -> None:
    not_audited = escrow(900)  # read early (an older create, say), then not asked for
    state = replace(STATE, escrows=(*ESCROWS, not_audited))
    early_ids = [*ALL_IDS[:300], not_audited.contract_id]
    with Emulator(state) as emu:
        settings = settings_for(emu.url)
        early = EarlySweep(lambda: early_ids, settings, policy=FAST)
        result = read_ledger(ALL_IDS, settings, progress=False, policy=FAST, early=early)
        sent = emu.stats.requests["getLedgerEntries"]
    assert by_contract(result).equals(by_contract(clean))  # a row per id asked for, none else
    alone = clean.stats
    assert result.stats.entries > alone.entries  # both sweeps' counters, the tokens read twice
    assert result.stats.batches == sent  # every request of both sweeps counted once
    assert result.sweep_start_ledger is not None and result.ledger_min == LATEST


def test_an_early_sweep_that_read_everything_leaves_nothing_to_read(clean: LedgerRead) -> None:
    with Emulator(STATE) as emu:
        settings = settings_for(emu.url)
        early = EarlySweep(lambda: ALL_IDS, settings, policy=FAST)
        result = read_ledger(ALL_IDS, settings, progress=False, policy=FAST, early=early)
        assert emu.stats.requests["getLedgerEntries"] == clean.stats.batches  # nothing read twice
    assert by_contract(result).equals(by_contract(clean))
    assert early.result() is None  # handed over once: whoever keeps the sweep does not keep its frame


@pytest.mark.parametrize("failure", ["candidates", "breaker", "unknown"])
def test_an_early_sweep_that_cannot_help_gives_no_head_start(
    clean: LedgerRead, failure: str, caplog: pytest.LogCaptureFixture
) -> None:
    def candidates() -> list[str] | None:
        if failure == "candidates":
            raise RuntimeError("the escrow_operations table is not there")
        return None if failure == "unknown" else ALL_IDS

    # The early sweep of "breaker" meets a dead RPC; the stage's own read a live one.
    with Emulator(STATE, FaultPlan(rate=1.0, kinds=("http_503",))) as dead, Emulator(STATE) as emu:
        early_url = dead.url if failure == "breaker" else emu.url
        early = EarlySweep(
            candidates, settings_for(early_url, rpc_max_retries=1, rpc_batch_size=50), policy=FAST
        )
        assert early.result() is None
        result = read_ledger(ALL_IDS, settings_for(emu.url), progress=False, policy=FAST, early=early)
    assert by_contract(result).equals(by_contract(clean))
    if failure != "unknown":
        assert "the ledger stage reads every escrow" in caplog.text


@pytest.mark.parametrize("holders", [False, True])
def test_escrows_read_as_columns_are_the_escrows_read_one_by_one(
    monkeypatch: pytest.MonkeyPatch, holders: bool
) -> None:
    """Issue 14: most escrow entries are decoded a read at a time, as columns; with that path
    declining everything, every entry is decoded one by one. Both give the very same frame, over
    every storage shape, the special cases, and custodial escrows with their balances."""
    state, ids = (
        (HOLDER_STATE, [e.contract_id for e in HOLDER_STATE.escrows]) if holders else (STATE, ALL_IDS)
    )
    taken: list[int] = []
    decode = batched.decode_escrow_columns

    def counted(blobs: pl.Series, owners: pl.Series) -> pl.DataFrame:
        columns = decode(blobs, owners)
        taken.append(columns.height)
        return columns

    monkeypatch.setattr(batched, "decode_escrow_columns", counted)
    with Emulator(state) as emu:
        as_columns = read(emu, ids=ids)
    assert sum(taken) >= len(ids) * 0.8, "most escrows should be read as columns"
    monkeypatch.setattr(batched, "decode_escrow_columns", lambda blobs, owners: decode(blobs, owners).clear())
    with Emulator(state) as emu:
        one_by_one = read(emu, ids=ids)
    assert as_columns.frame.equals(one_by_one.frame)
    assert set(as_columns.frame.n_chunks("all")) == {as_columns.frame.n_chunks()}


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("poisoned_count", [1, 60])
def test_an_answer_that_contradicts_itself_is_an_error_whichever_copy_comes_first(
    seed: int, poisoned_count: int
) -> None:
    """The RPC names a key twice with two different entries: neither is taken, whether the copy
    set aside to be decoded as columns (issue 14) is the escrow's own or the other one, and the
    escrow becomes an error row once its re-reads contradict themselves too. Every other escrow
    here is of one layout, so nothing else makes the sweep check its columns."""
    bulk = LedgerState(latest_ledger=LATEST, escrows=BULK, tokens=(TOKEN,))
    poisoned = {e.contract_id: "conflicting_entry" for e in BULK[7 : 7 + poisoned_count]}
    with Emulator(bulk, FaultPlan(poisoned=poisoned, seed=seed)) as emu:
        result = read(emu, ids=[e.contract_id for e in BULK])
    errors = result.frame.filter(pl.col("read_status") == "error")
    assert sorted(errors["contract_id"].to_list()) == sorted(poisoned)
    assert set(errors["read_error"]) == {"the RPC returned two different entries for this key"}
    assert result.stats.faults_by_kind["undecodable_entry"] >= len(poisoned)
