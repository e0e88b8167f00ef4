"""Emit: one structured warning per drifted invoice, before anything is persisted.

This keeps the seed's promise ("a mismatch produces a warning log with invoiceId, dbFundedTotal,
onChainAmount") and runs ahead of persistence, so a storage failure can never hide a mismatch.
"""

from __future__ import annotations

import logging
import re
from decimal import Decimal
from typing import Any, Final

import polars as pl

from reconcile_audit.compute.schemas import FINDINGS

LOGGER: Final = logging.getLogger("reconcile_audit.findings")
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")


def one_line(text: str) -> str:
    """``text`` with control characters shown as escapes, so it cannot forge log lines."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def major_units(base_units: str | None, decimals: int | None) -> str | None:
    """Exact major-unit text of an integer amount in base units (``"12345", 2 -> "123.45"``)."""
    if base_units is None or decimals is None:
        return None
    try:
        # Built from text, not scaleb(): Decimal arithmetic rounds to the context's 28 digits.
        value = Decimal(f"{int(base_units)}E-{decimals}")
    except ValueError:
        return None
    return format(value, "f")


def _payload(row: dict[str, Any]) -> dict[str, Any]:
    db_total = row["db_total_funded"]
    return {
        "invoiceId": row["invoice_id"],
        "tenantId": row["tenant_id"],
        "contractId": row["contract_id"],
        # Major units, as the database stores it (the seed's dbFundedTotal).
        "dbFundedTotal": None if db_total is None else format(db_total, "f"),
        # Major units too, so the two read side by side; exact, from the integer base units.
        "onChainAmount": major_units(row["chain_funded_base_units"], row["token_decimals"]),
        "dbFundedBaseUnits": row["db_funded_base_units"],
        "onChainBaseUnits": row["chain_funded_base_units"],
        "deltaBaseUnits": row["delta_base_units"],
        "tokenDecimals": row["token_decimals"],
        "currency": row["currency"],
        "reasonCode": row["reason_code"],
        "driftRank": row["drift_rank"],
    }


def emit_findings(findings: pl.DataFrame, *, logger: logging.Logger = LOGGER) -> int:
    """Log a WARNING for each ``mismatch`` row; return how many were logged.

    The fields go both into the message (for plain-text log readers) and into ``extra`` (for
    JSON formatters). Ids are written with ``repr`` so that a hostile id holding a newline cannot
    forge a second log line. Findings carry no secrets, so nothing here can leak one.
    """
    columns = [name for name in FINDINGS if name in findings.columns]
    drifted = findings.filter(pl.col("class") == "mismatch").select(columns)
    emitted = 0
    for row in drifted.iter_rows(named=True):
        payload = _payload(row)
        logger.warning(
            "escrow reconciliation mismatch: invoiceId=%r dbFundedTotal=%s onChainAmount=%s "
            "currency=%r contractId=%r: %s",
            payload["invoiceId"],
            payload["dbFundedTotal"],
            payload["onChainAmount"],
            payload["currency"],
            payload["contractId"],
            one_line(row["reason"] or ""),
            extra=payload,
        )
        emitted += 1
    return emitted
