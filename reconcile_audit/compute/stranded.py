"""Stranded escrows: invoices outside the audit whose escrow still holds, or still owes, money.

An invoice leaves the audit's scope when it is soft-deleted or moves to a status outside the
reconcilable set (cancelled, repaid, settled in the database). Its escrow does not leave the
chain with it. The out-of-scope invoices with a completed ``create`` (``extract_out_of_scope``)
have their escrows read in the same sweep as the audited ones; this module keeps those that:

- hold tokens: a custodial escrow's Balance entry above 0 (read with its instance, one ledger);
- still owe investors: funded minus distributed principal (F - DP) above 0 while the escrow is
  open, funded or cancelled (settled and withdrawn escrows owe nothing on the record, whatever
  their claims; their balance says what is left);
- or could not be read (an RPC error, an invalid address, a balance not read): they may hold
  funds, and an audit that cannot tell must say so.

They form their own frame (``STRANDED``), never a class: ``total`` and the five classes keep
their meaning.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import polars as pl

from reconcile_audit.compute.amounts import format_token_amount
from reconcile_audit.compute.extract import OutOfScope
from reconcile_audit.compute.ledger.types import LedgerRead
from reconcile_audit.compute.resolve import out_of_scope_address
from reconcile_audit.compute.schemas import ESCROW_STATUS_WORDS, STRANDED, conform

# Escrow statuses in which F - DP is money still owed to investors: open (0), funded (1), cancelled (4).
OWING_STATUSES: Final = frozenset({0, 1, 4})


@dataclass(frozen=True)
class Stranded:
    """The STRANDED frame, how many out-of-scope escrows were looked at, and why the check was
    not done (``skipped``), if it was not."""

    frame: pl.DataFrame
    checked: int = 0
    skipped: str | None = None

    @classmethod
    def not_checked(cls, why: str) -> Stranded:
        return cls(pl.DataFrame(schema=STRANDED), 0, why)

    def to_facts(self) -> dict[str, Any]:
        """Stored whole with a shard's result (the stored rows of class stranded lack the
        invoice's status and deletion time); :meth:`from_facts` reads it back."""
        return {"skipped": self.skipped, "checked": self.checked, "rows": self.frame.to_dicts()}

    @classmethod
    def from_facts(cls, facts: Mapping[str, Any]) -> Stranded:
        rows = facts.get("rows") or []
        frame = pl.DataFrame(rows, schema=STRANDED) if rows else pl.DataFrame(schema=STRANDED)
        return cls(frame, int(facts.get("checked") or 0), facts.get("skipped"))

    @property
    def holding(self) -> int:
        """Escrows known to hold or owe funds."""
        return self.frame.filter(pl.col("reason_code") == "stranded_funds").height

    @property
    def unread(self) -> int:
        """Escrows that could not be read, and may hold funds."""
        return self.frame.height - self.holding


def find_stranded(out_of_scope: OutOfScope, ledger_read: LedgerRead) -> Stranded:
    """The stranded escrows among ``out_of_scope``'s, from their rows of ``ledger_read``."""
    if out_of_scope.skipped is not None:
        return Stranded.not_checked(out_of_scope.skipped)
    invoices = out_of_scope.invoices
    if invoices.is_empty():
        return Stranded(pl.DataFrame(schema=STRANDED))
    joined = invoices.with_columns(out_of_scope_address()).join(
        ledger_read.frame, on="contract_id", how="left", maintain_order="left"
    )
    # Most out-of-scope escrows are closed and empty; only the rest are looked at row by row.
    balance_held = pl.col("chain_balance").is_not_null() & ~pl.col("chain_balance").is_in(["0"])
    owing = pl.col("escrow_status").is_in(list(OWING_STATUSES)) & (pl.col("funded_amount") != "0")
    balance_unread = pl.col("custodial").fill_null(False) & pl.col("chain_balance").is_null()
    unread = (
        pl.col("contract_id").is_null() | pl.col("read_status").is_null() | (pl.col("read_status") == "error")
    )
    candidates = joined.filter(
        unread | (pl.col("read_status") == "ok") & (balance_held | owing | balance_unread)
    )
    symbols = ledger_read.token_symbols
    rows = [row for row in map(lambda r: _stranded_row(r, symbols), candidates.iter_rows(named=True)) if row]
    frame = pl.DataFrame(rows, schema=STRANDED, orient="row") if rows else pl.DataFrame(schema=STRANDED)
    return Stranded(conform(frame, STRANDED, "stranded"), checked=invoices.height)


def _stranded_row(row: dict[str, Any], symbols: Mapping[str, str]) -> dict[str, Any] | None:
    """One STRANDED row, or None when the escrow turns out to hold and owe nothing."""
    decimals = row["token_decimals"]
    token = row["funding_token"]
    symbol = symbols.get(token) if token else None

    def money(base_units: int | str) -> str:
        return format_token_amount(base_units, decimals, symbol)

    where = (
        f"Invoice deleted at {row['deleted_at']} (status {row['status']!r})"
        if row["deleted_at"] is not None
        else f"Invoice in status {row['status']!r}, outside the audit"
    )
    base = {
        "invoice_id": row["invoice_id"],
        "invoice_pk": row["invoice_pk"],
        "tenant_id": row["tenant_id"],
        "status": row["status"],
        "deleted_at": row["deleted_at"],
        "contract_id": row["contract_id"] if row["contract_id"] is not None else row["op_contract_id"],
        "escrow_status": row["escrow_status"],
        "funding_token": token,
        "token_symbol": symbol,
        "token_decimals": decimals,
        "custodial": row["custodial"],
        "chain_balance_base_units": row["chain_balance"],
        "chain_owed_base_units": None,
        "chain_funded_base_units": row["funded_amount"],
        "chain_distributed_base_units": row["distributed_principal"],
        "latest_ledger": row["latest_ledger"],
    }
    if row["contract_id"] is None:
        return base | _unread(where, "its create operation names no escrow address")
    if row["read_status"] is None:
        return base | _unread(where, "its escrow was not read")
    if row["read_status"] == "error":
        return base | _unread(
            where, f"its escrow {row['contract_id']} could not be read ({row['read_error']})"
        )
    parts = []
    balance = row["chain_balance"]
    if balance is not None and int(balance) > 0:
        parts.append(f"holds {money(balance)}")
    owed = None
    status = row["escrow_status"]
    if status in OWING_STATUSES:
        owed = int(row["funded_amount"]) - int(row["distributed_principal"] or 0)
        if owed > 0:
            paid = money(row["distributed_principal"] or 0)
            parts.append(
                f"still owes investors {money(owed)} (funded {money(row['funded_amount'])}, paid out {paid}; "
                f"escrow {ESCROW_STATUS_WORDS[status]})"
            )
    if parts:
        reason = f"{where}, but its escrow {row['contract_id']} " + " and ".join(parts)
        return base | {
            "reason_code": "stranded_funds",
            "reason": reason,
            "chain_owed_base_units": str(owed) if owed is not None and owed > 0 else None,
        }
    if row["custodial"] and balance is None:
        note = row["balance_note"] or "balance not read"
        return base | _unread(where, f"its escrow {row['contract_id']} is custodial, and its {note}")
    return None


def _unread(where: str, what: str) -> dict[str, str]:
    return {"reason_code": "stranded_unread", "reason": f"{where}; {what}: it may still hold funds"}
