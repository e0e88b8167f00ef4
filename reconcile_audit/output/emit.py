"""Emit: one structured warning per drifted invoice, before anything is persisted.

This keeps the seed's promise ("a mismatch produces a warning log with invoiceId, dbFundedTotal,
onChainAmount") and runs ahead of persistence, so a storage failure can never hide a mismatch.
"""

from __future__ import annotations

import logging
from typing import Any, Final

import polars as pl

from reconcile_audit.compute.amounts import major_units, one_line
from reconcile_audit.compute.schemas import FINDINGS

LOGGER: Final = logging.getLogger("reconcile_audit.findings")


def _payload(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "invoiceId": row["invoice_id"],
        "tenantId": row["tenant_id"],
        "contractId": row["contract_id"],
        # Major units, as the database stores it (the seed's dbFundedTotal).
        "dbFundedTotal": row["db_total_funded"],
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
