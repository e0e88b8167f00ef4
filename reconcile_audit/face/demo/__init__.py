"""The embedded demo: synthetic invoices in a DuckDB file, their escrows on a loopback emulator.

``reconcile-audit demo`` builds both, replays a few earlier nights through the real stages (on
slightly different ledger states, so the report's trend, new, persisting and resolved sections
show real history), then runs the same notebook as ``reconcile-audit run``. The notebook's own
stored defaults use :func:`embedded_demo` to be self-sufficient (nbval runs it that way).

Every class and every flag is planted at least once; :attr:`DemoData.planted` says where, for
the tests. The data is deterministic for a given seed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import polars as pl
from stellar_sdk import StrKey

from reconcile_audit.compute import classify, db, extract, history, ledger, persist, resolve
from reconcile_audit.compute.lifecycle import AckAction
from reconcile_audit.compute.persist import RunRecord, acks
from reconcile_audit.compute.schemas import ClassCounts, RunStatus
from reconcile_audit.compute.settings import load_settings
from reconcile_audit.emulator.activity import ChainTransaction, escrow_transaction
from reconcile_audit.emulator.server import Emulator
from reconcile_audit.emulator.state import (
    TESTNET,
    EscrowSpec,
    LedgerState,
    Mutation,
    TokenSpec,
    random_account_id,
    random_contract_id,
)
from reconcile_audit.face import runner
from reconcile_audit.face.demo import sourcedb
from reconcile_audit.face.run import default_run_key
from reconcile_audit.resources import default_output_dir

log = logging.getLogger(__name__)

LEDGERS_PER_DAY: Final = 17_280  # 5-second ledgers
LATEST_LEDGER: Final = 2_000_000
DEMO_LEDGERS_PER_REQUEST: Final = 1  # the emulated network closes a ledger per getLedgerEntries call
TENANTS: Final = ("acme", "globex", "initech")
RECONCILABLE: Final = ("linked_escrow", "funded", "partially_funded")
DEMO_DATABASE: Final = "demo.duckdb"
BASE_TIME: Final = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)

# kind -> how many invoices carry it. Every class and flag of schemas.CLASSES / FLAGS appears.
PLANTED_KINDS: Final = (
    "mismatch_db_over",  # chain holds less than the database says
    "mismatch_chain_over",  # chain holds more (new tonight)
    "mismatch_new_large",  # a large new drift (new tonight)
    "invoice_id_mismatch",  # the escrow's invoice_id is another invoice's
    "missing_instance",  # valid address, no contract instance on chain
    "no_escrow",  # instance without Escrow in its storage
    "unlinked",  # no escrow address known
    "bad_checksum",  # address with a wrong strkey checksum
    "invalid_invoice_id",  # fails the backend's id rule
    "hostile_invoice_id",  # markup as an id: must render as text
    "unknown_decimals",  # funding token without METADATA and no configured decimals
    "archived",  # liveUntilLedgerSeq 0
    "ttl_expiring",  # TTL ends within the warning window
    "duplicate_summary",  # two escrow_summaries rows
    "null_total",  # NULL total_funded, escrow funded 0: a match with the flag
    "no_summary",  # no summary row at all, escrow funded: a mismatch with the flag
    "mapped_address",  # address from ESCROW_ADDR_BY_INVOICE, not escrow_operations
    "wrong_token",  # a USDC invoice whose escrow holds EURC (RECONCILE_CURRENCY_TOKENS)
    # What the escrow holds (issue 11). Every other escrow runs the custodial code and holds
    # exactly what its status requires.
    "balance_short",  # holds half of what it is funded with: money is missing
    "balance_surplus",  # holds 12.00 more than funded: stray tokens
    "balance_unread",  # funded in a Wasm token (WUSD), whose balances are not Balance entries
    "balance_archived",  # its Balance entry is archived
    "balance_ttl_expiring",  # its Balance entry's TTL ends within the warning window
    "withdrawn",  # status withdrawn, everything paid out, holds nothing: a match
    "cancelled_refunded",  # status cancelled, a quarter refunded, holds the rest: a match
    "record_only",  # pre-custody code: the tokens were never the escrow's to hold
    # The database's other sides (escrow_summaries.total_released, available_amount and
    # stellar_ledger_sequence), which every summary row carries.
    "released_mismatch",  # cancelled with a quarter refunded, but the database says nothing was
    "db_stale",  # the escrow changed after the ledger the database row was synced at
    # Escrows that change while the sweep reads them (the emulator's mutations): read with half
    # the funding, then again after the sweep, when it has all of it or a third of it.
    "settled_during_run",
    "changed_during_run",
)
NEW_TONIGHT: Final = frozenset({"mismatch_chain_over", "mismatch_new_large"})
# What `demo --deliver` takes from the operator's environment; nothing else of it reaches the demo.
DELIVERY_VARIABLES: Final = (
    "SMTP_HOST",
    "SMTP_PORT",
    "SMTP_USER",
    "SMTP_PASSWORD",
    "SMTP_STARTTLS",
    "ALERT_EMAIL_TO",
    "ALERT_EMAIL_FROM",
    "RECONCILE_EMAIL_MAX_ATTACHMENT_BYTES",
    "RECONCILE_REPORT_BASE_URL",
    "PUSHGATEWAY_URL",
)


@dataclass(frozen=True)
class DemoData:
    """Source rows (the three ``sourcedb`` frames), the ledger state, and where findings were planted."""

    invoices: pl.DataFrame
    summaries: pl.DataFrame
    operations: pl.DataFrame
    escrows: tuple[EscrowSpec, ...]
    tokens: tuple[TokenSpec, ...]
    escrow_addr_by_invoice: str
    currency_tokens: str  # RECONCILE_CURRENCY_TOKENS: each invoice currency's token, as JSON
    planted: Mapping[str, tuple[str, ...]]  # kind -> invoice ids
    # nights_ago -> {contract_id: funded_amount} on that night, for the replayed history.
    earlier_funding: Mapping[int, Mapping[str, int]]
    # Escrows that change while tonight's sweep reads them.
    mutations: tuple[Mutation, ...] = ()
    latest_ledger: int = LATEST_LEDGER
    stranded: tuple[str, ...] = ()  # out-of-scope invoices whose escrow still holds funds
    transactions: tuple[ChainTransaction, ...] = ()  # escrow calls on chain, with their events

    def ledger_state(self, nights_ago: int = 0) -> LedgerState:
        """The chain as it was ``nights_ago`` nights before tonight."""
        overrides = self.earlier_funding.get(nights_ago, {}) if nights_ago else {}
        escrows = tuple(
            # A custodial escrow then held what it was funded with, as it does tonight.
            replace(
                spec,
                funded_amount=overrides[spec.contract_id],
                token_balance=overrides[spec.contract_id]
                if spec.token_balance == spec.funded_amount
                else spec.token_balance,
            )
            if spec.contract_id in overrides
            else spec
            for spec in self.escrows
        )
        return LedgerState(
            latest_ledger=self.latest_ledger - nights_ago * LEDGERS_PER_DAY,
            escrows=escrows,
            tokens=self.tokens,
            mutations=() if nights_ago else self.mutations,
            transactions=self.transactions,
        )


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _money(cents: int) -> str:
    sign = "-" if cents < 0 else ""
    return f"{sign}{abs(cents) // 100}.{abs(cents) % 100:02d}"


def _broken_checksum(contract_id: str) -> str:
    """Same length and alphabet, one character changed: the strkey checksum no longer holds."""
    position = 20
    swapped = "B" if contract_id[position] != "B" else "C"
    return contract_id[:position] + swapped + contract_id[position + 1 :]


def _custody(kind: str | None, funded: int, scale: int, *, status: int) -> dict[str, Any]:
    """The custody fields of one demo escrow: what it holds, its status and principal paid out."""
    if kind == "record_only":
        return {"custodial": False, "token_balance": None, "status": status}
    fields: dict[str, Any] = {"custodial": True, "token_balance": funded, "status": status}
    if kind == "balance_short":
        fields["token_balance"] = funded // 2
    elif kind == "balance_surplus":
        fields["token_balance"] = funded + 12_00 * scale
    elif kind == "balance_archived":
        fields["balance_live_until_ledger"] = 0
    elif kind == "balance_ttl_expiring":
        fields["balance_live_until_ledger"] = LATEST_LEDGER + 2_000
    elif kind == "withdrawn":
        fields.update(status=3, distributed_principal=funded, token_balance=0)
    elif kind in ("cancelled_refunded", "released_mismatch"):
        refunded = funded // 4 // scale * scale  # whole cents, as the database keeps them
        fields.update(status=4, distributed_principal=refunded, token_balance=funded - refunded)
    return fields


def build_dataset(invoices: int = 10_000, *, seed: int = 7, history_nights: int = 3) -> DemoData:
    """``invoices`` reconcilable invoices (plus a few the extract must skip), their escrows, and
    the planted findings. ``history_nights`` earlier nights get their own drifts, resolved since.
    """
    if invoices < 50:
        raise ValueError("the demo needs at least 50 invoices to plant every finding")
    rng = random.Random(seed)
    tokens = {
        "USDC": TokenSpec(contract_id=random_contract_id(rng), decimals=7, name="USD Coin", symbol="USDC"),
        "EURC": TokenSpec(contract_id=random_contract_id(rng), decimals=6, name="Euro Coin", symbol="EURC"),
        "NOMETA": TokenSpec(contract_id=random_contract_id(rng), decimals=None, name="Legacy", symbol="LGCY"),
        # Not from rng, so the rest of the data stays as it was before this token existed.
        "WUSD": TokenSpec(
            contract_id=StrKey.encode_contract(hashlib.sha256(b"demo-wasm-usd").digest()),
            decimals=7,
            name="Wrapped USD",
            symbol="WUSD",
            stellar_asset=False,
        ),
    }
    admin = random_account_id(rng)
    invoice_rows: list[dict[str, Any]] = []
    summary_rows: list[dict[str, Any]] = []
    operation_rows: list[dict[str, Any]] = []
    escrows: list[EscrowSpec] = []
    planted: dict[str, list[str]] = {kind: [] for kind in PLANTED_KINDS}
    mappings: list[dict[str, Any]] = []
    mutations: list[Mutation] = []
    tonight_only: dict[str, int] = {}  # contract_id -> funded amount that matched on earlier nights
    regular: list[tuple[str, int]] = []  # (contract_id, funded) of plain matching escrows

    # The first invoices carry the planted kinds, in order; the rest are plain matches.
    plan = [*PLANTED_KINDS, "mismatch_db_over", "archived", "unlinked"]
    for n in range(invoices):
        kind = plan[n] if n < len(plan) else None
        pk = _uuid(rng)
        invoice_id = f"INV_{n:07d}"
        currency = "EURC" if rng.random() < 0.25 else "USDC"
        if kind == "unknown_decimals":
            currency = "LGCY"
        if kind == "wrong_token":
            currency = "USDC"
        elif kind == "balance_unread":
            currency = "WUSD"
        token = tokens[
            "NOMETA" if kind == "unknown_decimals" else "EURC" if kind == "wrong_token" else currency
        ]
        decimals = token.decimals if token.decimals is not None else 7
        scale = 10 ** (decimals - 2)
        amount_cents = rng.randrange(500_00, 250_000_00)
        funded_cents = amount_cents if rng.random() < 0.6 else rng.randrange(0, amount_cents)
        if kind == "mismatch_new_large":
            # Large enough that the 40,000.00 shortfall below leaves a positive amount on chain.
            amount_cents = funded_cents = rng.randrange(100_000_00, 250_000_00)
        escrow_invoice_id = invoice_id
        if kind == "invalid_invoice_id":
            invoice_id = f"INV {n:07d}/draft"
        elif kind == "hostile_invoice_id":
            invoice_id = f'<img src=x onerror="alert({n})">'
        invoice_rows.append(
            {
                "id": pk,
                "invoice_id": invoice_id,
                "tenant_id": TENANTS[n % len(TENANTS)],
                "status": "funded" if funded_cents == amount_cents else rng.choice(RECONCILABLE),
                "amount": _money(amount_cents),
                "currency": currency,
            }
        )
        updated = BASE_TIME + timedelta(minutes=n)
        latest_summary: dict[str, Any] | None = None  # given the other sides once the escrow is known
        if kind == "null_total":
            latest_summary = {"invoice_id": pk, "total_funded": None, "last_updated_at": updated}
            funded_cents = 0
        elif kind != "no_summary":
            latest_summary = {
                "invoice_id": pk,
                "total_funded": _money(funded_cents),
                "last_updated_at": updated,
            }
        if latest_summary is not None:
            summary_rows.append(latest_summary)
        if kind == "duplicate_summary":
            # An older row with another total: the extract must take the latest, not add them up.
            older = updated - timedelta(days=3)
            summary_rows.append(
                {"invoice_id": pk, "total_funded": _money(funded_cents // 2), "last_updated_at": older}
            )

        contract_id = random_contract_id(rng)
        if kind != "unlinked":
            if kind == "mapped_address":
                mappings.append({"invoiceId": invoice_id, "escrowAddress": contract_id, "isActive": True})
            else:
                address = _broken_checksum(contract_id) if kind == "bad_checksum" else contract_id
                # A failed earlier attempt: resolve must take the latest completed create.
                if n % 97 == 0:
                    operation_rows.append(
                        {
                            "invoice_id": pk,
                            "operation_type": "create",
                            "contract_id": random_contract_id(rng),
                            "status": "failed",
                            "completed_at": None,
                        }
                    )
                operation_rows.append(
                    {
                        "invoice_id": pk,
                        "operation_type": "create",
                        "contract_id": address,
                        "status": "completed",
                        "completed_at": updated - timedelta(days=30),
                    }
                )
        if kind is not None:
            planted[kind].append(invoice_id)

        chain_funded = funded_cents * scale
        if kind == "mismatch_db_over":
            chain_funded -= rng.randrange(1, 5_000_00) * scale
        elif kind == "mismatch_chain_over":
            chain_funded += 12_34 * scale
        elif kind == "mismatch_new_large":
            chain_funded -= 40_000_00 * scale
        elif kind == "no_summary":
            chain_funded = max(chain_funded, 1_000_00 * scale)
        elif kind in ("settled_during_run", "changed_during_run"):
            chain_funded //= 2
        if kind in NEW_TONIGHT or kind in ("settled_during_run", "changed_during_run"):
            tonight_only[contract_id] = funded_cents * scale
        if kind in ("missing_instance", "unlinked"):
            continue
        live_until = 3_000_000
        if kind == "archived":
            live_until = 0
        elif kind == "ttl_expiring":
            live_until = LATEST_LEDGER + 2_000
        custody = _custody(kind, chain_funded, scale, status=1 if funded_cents == amount_cents else 0)
        escrows.append(
            EscrowSpec(
                contract_id=contract_id,
                invoice_id="INV_9999999" if kind == "invoice_id_mismatch" else escrow_invoice_id,
                funded_amount=chain_funded,
                amount=amount_cents * scale,
                funding_target=amount_cents * scale,
                funding_token=token.contract_id,
                admin=admin,
                sme_address=random_account_id(rng),
                has_escrow=kind != "no_escrow",
                live_until_ledger=live_until,
                last_modified_ledger=LATEST_LEDGER - rng.randrange(1, 200_000),
                **custody,
            )
        )
        if kind in ("settled_during_run", "changed_during_run"):
            # Modified once the sweep had begun (it starts at LATEST_LEDGER), and again before the
            # re-read: its two reads, the sweep's and the balance pair's, see the first change.
            escrows[-1] = replace(escrows[-1], last_modified_ledger=LATEST_LEDGER + 20)
            final = funded_cents * scale if kind == "settled_during_run" else funded_cents * scale // 3
            mutations.append(Mutation(2, replace(escrows[-1], funded_amount=final, token_balance=final)))
        if latest_summary is not None:
            # The database's view: what it says was paid out, what is left of what it says was
            # funded, and the ledger it last synced the escrow at.
            paid_cents = (escrows[-1].distributed_principal or 0) // scale
            latest_summary["total_released"] = _money(0 if kind == "released_mismatch" else paid_cents)
            latest_summary["available_amount"] = _money(funded_cents - paid_cents)
            synced = escrows[-1].last_modified_ledger - (500 if kind == "db_stale" else 0)
            latest_summary["stellar_ledger_sequence"] = str(synced)
        if kind is None:
            regular.append((contract_id, chain_funded))

    # Invoices the extract must skip: not yet reconcilable, soft-deleted, or closed. Those with an
    # escrow are read for the stranded check: the deleted one's escrow still holds its funding, the
    # repaid one's holds 0.37 USDC of dust, the cancelled one's refunded everyone and holds nothing.
    # Their own generator, so the data above and the history below stay as they were.
    out_rng = random.Random(seed + 1)
    usdc = tokens["USDC"]
    left_out = (
        ("draft", None, None),
        ("funded", BASE_TIME, {"status": 1, "token_balance": 250_00 * 10**5}),
        ("cancelled", None, {"status": 4, "distributed_principal": 250_00 * 10**5, "token_balance": 0}),
        ("repaid", None, {"status": 3, "distributed_principal": 250_00 * 10**5, "token_balance": 37 * 10**5}),
    )
    stranded: list[str] = []
    for n, (status, deleted, escrow) in enumerate(left_out):
        pk = _uuid(rng) if n < 3 else _uuid(out_rng)
        invoice_id = f"SKIP_{n:03d}"
        invoice_rows.append(
            {
                "id": pk,
                "invoice_id": invoice_id,
                "tenant_id": TENANTS[n % len(TENANTS)],
                "status": status,
                "amount": "250.00",
                "currency": "USDC",
                "deleted_at": deleted,
            }
        )
        summary_rows.append({"invoice_id": pk, "total_funded": "1.00", "last_updated_at": BASE_TIME})
        if escrow is None:
            continue
        contract_id = random_contract_id(out_rng)
        operation_rows.append(
            {
                "invoice_id": pk,
                "operation_type": "create",
                "contract_id": contract_id,
                "status": "completed",
                "completed_at": BASE_TIME - timedelta(days=60),
            }
        )
        escrows.append(
            EscrowSpec(
                contract_id=contract_id,
                invoice_id=invoice_id,
                funded_amount=250_00 * 10**5,
                amount=250_00 * 10**5,
                funding_target=250_00 * 10**5,
                funding_token=usdc.contract_id,
                admin=admin,
                sme_address=random_account_id(out_rng),
                custodial=True,
                **escrow,
            )
        )
        if escrow["token_balance"]:
            stranded.append(invoice_id)

    decimals_of = {t.contract_id: t.decimals if t.decimals is not None else 7 for t in tokens.values()}
    transactions = _plant_histories(planted, invoice_rows, summary_rows, operation_rows, escrows, decimals_of)

    earlier: dict[int, dict[str, int]] = {}
    for night in range(1, history_nights + 1):
        # Each earlier night some plain escrows were still catching up with the database.
        drifted = rng.sample(regular, k=min(len(regular), 2 + 2 * night))
        funding = {
            cid: funded + rng.choice((-1, 1)) * rng.randrange(1, 100_00) * 10**5 for cid, funded in drifted
        }
        earlier[night] = MappingProxyType({**funding, **tonight_only})

    return DemoData(
        invoices=_frame(invoice_rows, INVOICE_COLUMNS),
        summaries=_frame(summary_rows, SUMMARY_COLUMNS),
        operations=_frame(operation_rows, OPERATION_COLUMNS),
        escrows=tuple(escrows),
        tokens=tuple(tokens.values()),
        escrow_addr_by_invoice=json.dumps({"mappings": mappings}),
        currency_tokens=json.dumps(
            {
                "USDC": tokens["USDC"].contract_id,
                "EURC": tokens["EURC"].contract_id,
                "LGCY": tokens["NOMETA"].contract_id,
                "WUSD": tokens["WUSD"].contract_id,
            }
        ),
        planted=MappingProxyType({kind: tuple(ids) for kind, ids in planted.items()}),
        earlier_funding=MappingProxyType(earlier),
        mutations=tuple(mutations),
        stranded=tuple(stranded),
        transactions=transactions,
    )


# The drifts whose causes the chain holds (issue 12), and how many ledgers before the latest
# their transaction landed: well inside the RPC's retention window.
EXPLAINED_DRIFTS: Final = {
    "mismatch_chain_over": 3_000,  # a fund the database marks failed, which landed
    "mismatch_db_over": 4_000,  # an unfund the database marks pending, which landed
    "released_mismatch": 5_000,  # a refund the database has not recorded as released
    "balance_short": 6_000,  # a withdrawal took half the escrow's tokens
}
# The second db-over drift: the database marks a fund completed whose transaction failed.
FAILED_FUND_LEDGERS_AGO: Final = 7_000
# mismatch_new_large stays unexplained: nothing on chain since the database's last sync.


def _plant_histories(
    planted: Mapping[str, list[str]],
    invoice_rows: list[dict[str, Any]],
    summary_rows: list[dict[str, Any]],
    operation_rows: list[dict[str, Any]],
    escrows: list[EscrowSpec],
    decimals_of: Mapping[str, int],
) -> tuple[ChainTransaction, ...]:
    """Give planted drifts the transactions and events that explain them, and the database the
    operations (with transaction hashes) that missed them. Changes ``escrows``, ``summary_rows``
    and ``operation_rows`` in place; returns the chain's transactions."""
    pk_of = {row["invoice_id"]: row["id"] for row in invoice_rows}
    summary_of = {row["invoice_id"]: row for row in summary_rows if "stellar_ledger_sequence" in row}
    index_of = {spec.invoice_id: n for n, spec in enumerate(escrows)}
    transactions: list[ChainTransaction] = []

    def plant(
        invoice_id: str,
        ago: int,
        event: str,
        operation: str,
        db_status: str,
        *,
        successful: bool = True,
        **data: Any,
    ) -> None:
        n = index_of[invoice_id]
        spec = escrows[n]
        ledger = LATEST_LEDGER - ago
        transaction = escrow_transaction(
            event,
            contract_id=spec.contract_id,
            invoice_id=invoice_id,
            ledger=ledger,
            network_passphrase=TESTNET,
            function=operation,
            successful=successful,
            **data,
        )
        transactions.append(transaction)
        if successful:
            # The escrow last changed when the call landed; the database synced just before it.
            escrows[n] = replace(spec, last_modified_ledger=ledger)
            summary = summary_of.get(pk_of[invoice_id])
            if summary is not None:
                summary["stellar_ledger_sequence"] = str(ledger - 60)
        operation_rows.append(
            {
                "invoice_id": pk_of[invoice_id],
                "operation_type": operation,
                "contract_id": spec.contract_id,
                "status": db_status,
                "completed_at": BASE_TIME if db_status == "completed" else None,
                "stellar_transaction_hash": transaction.tx_hash,
            }
        )

    investor = StrKey.encode_ed25519_public_key(hashlib.sha256(b"demo-investor").digest())
    chain_over = planted["mismatch_chain_over"][0]
    spec = escrows[index_of[chain_over]]
    missed = 12_34 * 10 ** (decimals_of[spec.funding_token] - 2)  # the drift build_dataset planted
    plant(
        chain_over,
        EXPLAINED_DRIFTS["mismatch_chain_over"],
        "escrow_funded",
        "fund",
        "failed",
        investor=investor,
        amount=missed,
        funded_amount=spec.funded_amount,
        status=spec.status,
    )
    unfunded, failed_fund = planted["mismatch_db_over"][:2]
    spec = escrows[index_of[unfunded]]
    summary = summary_of[pk_of[unfunded]]
    gap = _base_units(summary["total_funded"], decimals_of[spec.funding_token]) - spec.funded_amount
    plant(
        unfunded,
        EXPLAINED_DRIFTS["mismatch_db_over"],
        "escrow_unfunded",
        "unfund",
        "pending",
        investor=investor,
        amount=gap,
        remaining_contribution=0,
        new_funded_amount=spec.funded_amount,
    )
    refunded = planted["released_mismatch"][0]
    spec = escrows[index_of[refunded]]
    plant(
        refunded,
        EXPLAINED_DRIFTS["released_mismatch"],
        "investor_refunded_evt",
        "refund",
        "processing",
        investor=investor,
        amount=spec.distributed_principal or 0,
    )
    short = planted["balance_short"][0]
    spec = escrows[index_of[short]]
    taken = spec.funded_amount - (spec.token_balance or 0)
    fee = taken * 25 // 10_000
    plant(
        short,
        EXPLAINED_DRIFTS["balance_short"],
        "sme_withdrew",
        "withdraw",
        "failed",
        amount=taken - fee,
        fee=fee,
        recipient=spec.sme_address,
    )
    plant(
        failed_fund,
        FAILED_FUND_LEDGERS_AGO,
        "escrow_funded",
        "fund",
        "completed",
        successful=False,
        investor=investor,
        amount=0,
        funded_amount=0,
        status=0,
    )
    return tuple(transactions)


def _base_units(total: str, decimals: int) -> int:
    whole, _, fraction = total.partition(".")
    return int(whole + fraction.ljust(decimals, "0")[:decimals])


_TIME = pl.Datetime("us", "UTC")
INVOICE_COLUMNS: Final = pl.Schema(
    {
        "id": pl.String,
        "invoice_id": pl.String,
        "tenant_id": pl.String,
        "status": pl.String,
        "amount": pl.String,
        "currency": pl.String,
        "deleted_at": _TIME,
    }
)
SUMMARY_COLUMNS: Final = pl.Schema(
    {
        "invoice_id": pl.String,
        "total_funded": pl.String,
        "total_released": pl.String,
        "available_amount": pl.String,
        "stellar_ledger_sequence": pl.String,
        "last_updated_at": _TIME,
    }
)
OPERATION_COLUMNS: Final = pl.Schema(
    {
        "invoice_id": pl.String,
        "operation_type": pl.String,
        "contract_id": pl.String,
        "status": pl.String,
        "completed_at": _TIME,
        "stellar_transaction_hash": pl.String,
    }
)


def _frame(rows: list[dict[str, Any]], schema: pl.Schema) -> pl.DataFrame:
    return pl.DataFrame([{name: row.get(name) for name in schema} for row in rows], schema=schema)


def write_source_database(url: str, data: DemoData) -> None:
    """Create the source tables at ``url`` (PostgreSQL or DuckDB) and bulk-load the demo rows."""
    with db.connect(url) as conn:
        sourcedb.create_source_schema(conn)
        sourcedb.load_source_rows(conn, data.invoices, data.summaries, data.operations)


def fresh_duckdb(path: Path) -> str:
    """``duckdb:///path`` after removing an earlier demo file: a rerun starts from scratch."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in (path, path.with_name(path.name + ".wal")):
        stale.unlink(missing_ok=True)
    return f"duckdb://{path.resolve()}"


def replay_night(data: DemoData, url: str, nights_ago: int, tonight: datetime) -> ClassCounts:
    """Run the stages (extract to persist) against the chain as it was ``nights_ago`` nights ago.

    This is real history for the final run to compare with: the same stages on a different
    ledger state, stored under that night's run key and start time. Returns the class counts.
    """
    started_at = tonight - timedelta(days=nights_ago)
    run_key = default_run_key(None, started_at)
    with Emulator(
        data.ledger_state(nights_ago), ledger_step_per_request=DEMO_LEDGERS_PER_REQUEST
    ) as emulator:
        # An empty environment: the replay must not pick up the operator's production settings.
        settings = load_settings(
            {
                "database_url": url,
                "rpc_url": emulator.url,
                "escrow_addr_by_invoice": data.escrow_addr_by_invoice,
                "currency_tokens": data.currency_tokens,
                "run_key": run_key,
            },
            {},
        )
        attempt = f"replay-{nights_ago}-{run_key}"
        persist.start_run(url, run_key, None, started_at, attempt=attempt)
        invoices = extract.extract_invoices(settings)
        out_of_scope = extract.extract_out_of_scope(settings)
        resolved = resolve.resolve_addresses(invoices, settings.escrow_addr_by_invoice)
        ledger.preflight(settings)
        to_read = resolve.contract_ids_to_read(resolved, out_of_scope)
        ledger_read = ledger.read_ledger(to_read, settings, progress=False)
        result = classify.audit(resolved, ledger_read, settings, out_of_scope=out_of_scope)
    comparison = history.compare_with_history(result, settings, run_key=run_key, now=started_at)
    record = RunRecord(
        run_key=run_key,
        tenant_id=None,
        started_at=started_at,
        finished_at=started_at + timedelta(minutes=2),
        status=RunStatus.COMPLETED,
        counts=result.counts,
        ledger_min=result.ledger_min,
        ledger_max=result.ledger_max,
        attempt=attempt,
    )
    outcome = persist.persist_run(url, record, comparison.findings, result.stranded.frame)
    if not outcome.ok:
        raise RuntimeError(f"replaying night -{nights_ago} could not be stored: {outcome.error}")
    return result.counts


DEMO_ACK_REASON: Final = "demo: the escrow of this invoice is being set up by onboarding (ticket OPS-1234)"


def acknowledge_one(url: str, at: datetime) -> None:
    """Acknowledge the first unlinked finding of the last replayed night, as an operator would
    (`reconcile-audit ack`), so that the demo's report shows an acknowledged finding."""
    judged = acks.findings_with_acks(url, at, sla_days=7)
    unlinked = judged.filter(pl.col("class") == "unlinked").sort("finding_id").head(1)
    if unlinked.height:
        acks.record(url, unlinked, acks.Acknowledgement(AckAction.ACK, "demo", DEMO_ACK_REASON, at))


@dataclass(frozen=True)
class EmbeddedDemo:
    """What the notebook needs to run on demo data: a database URL, an RPC URL, the data (whose
    ``escrow_addr_by_invoice`` and ``currency_tokens`` are the settings to run it with)."""

    database_url: str
    rpc_url: str
    data: DemoData

    def environ(self) -> dict[str, str]:
        """The environment a run of the demo needs, and nothing of the operator's."""
        return {
            "DATABASE_URL": self.database_url,
            "RECONCILE_STATE_DATABASE_URL": self.database_url,
            "SOROBAN_RPC_URL": self.rpc_url,
            "ESCROW_ADDR_BY_INVOICE": self.data.escrow_addr_by_invoice,
            "RECONCILE_CURRENCY_TOKENS": self.data.currency_tokens,
        }


@contextmanager
def embedded_demo(
    workdir: Path, *, invoices: int = 300, history_nights: int = 0, seed: int = 7
) -> Iterator[EmbeddedDemo]:
    """A demo database in ``workdir`` (history replayed for ``history_nights``) and an emulator
    serving tonight's escrows, for as long as the block runs."""
    data = build_dataset(invoices, seed=seed, history_nights=history_nights)
    url = fresh_duckdb(workdir / DEMO_DATABASE)
    write_source_database(url, data)
    tonight = datetime.now(UTC)
    for nights_ago in range(history_nights, 0, -1):
        replay_night(data, url, nights_ago, tonight)
    if history_nights:
        acknowledge_one(url, tonight - timedelta(hours=12))
    # A real RPC closes a ledger every few seconds, so a sweep reads across several ledgers.
    with Emulator(data.ledger_state(0), ledger_step_per_request=DEMO_LEDGERS_PER_REQUEST) as emulator:
        yield EmbeddedDemo(url, emulator.url, data)


def run_demo(
    *,
    invoices: int = 10_000,
    output_dir: Path | None = None,
    history_runs: int = 3,
    progress: bool = False,
    seed: int = 7,
    deliver: bool = False,
) -> runner.RunOutcome:
    """Build the demo, then run the notebook through :func:`reconcile_audit.face.runner.run`.

    Returns the runner's ``RunOutcome``: the same exit codes and folder layout as ``run``. The
    demo database lives in ``<output_dir>/demo/`` and is rebuilt on every call. The operator's
    environment is left out, but for ``deliver``: then the delivery settings (SMTP, recipients,
    Pushgateway) are taken from it, to see the demo's email and metrics arrive somewhere real.
    """
    output_dir = (output_dir or default_output_dir()).resolve()
    demo_dir = output_dir / "demo"
    if demo_dir.exists():
        shutil.rmtree(demo_dir)
    with embedded_demo(demo_dir, invoices=invoices, history_nights=history_runs, seed=seed) as embedded:
        log.info("demo: %d invoices in %s, emulator at %s", invoices, embedded.database_url, embedded.rpc_url)
        environ = embedded.environ()
        if deliver:
            environ.update({name: os.environ[name] for name in DELIVERY_VARIABLES if name in os.environ})
        request = runner.RunRequest(output_dir=output_dir, deliver=deliver, progress_bar=progress)
        return runner.run(request, environ)
