"""Small HTML charts and tables for the notebook's cell outputs.

Plain HTML tables with inline widths: light, no JavaScript, and they survive nbconvert and the
executed notebook kept as the audit record. The emailed report is ``report``; these are only the
analyst's quick look while the cells run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from html import escape
from pathlib import Path
from typing import Final

import duckdb
import polars as pl

from reconcile_audit.compute.schemas import CLASSES, FindingClass
from reconcile_audit.compute.settings import REDACTED, Secret, Settings, public_url, redact_url

CLASS_COLOURS: Final = {
    FindingClass.MATCH: "#4c9a2a",
    FindingClass.MISMATCH: "#c0392b",
    FindingClass.MISSING_ON_CHAIN: "#d68910",
    FindingClass.UNLINKED: "#7f8c8d",
    FindingClass.ERROR: "#8e44ad",
}


def _bar_rows(rows: list[tuple[str, Mapping[str, int]]], width_px: int) -> str:
    peak = max((sum(values.values()) for _, values in rows), default=0) or 1
    lines = []
    for label, values in rows:
        cells = "".join(
            f'<span title="{escape(name)}: {count:,}" style="display:inline-block;height:12px;'
            f'width:{max(round(width_px * count / peak), 1 if count else 0)}px;background:{CLASS_COLOURS.get(name, "#555")}">'
            "</span>"
            for name, count in values.items()
        )
        detail = ", ".join(f"{escape(name)} {count:,}" for name, count in values.items() if count)
        lines.append(
            f"<tr><td style='text-align:left'>{escape(label)}</td>"
            f"<td style='text-align:left;white-space:nowrap'>{cells}</td>"
            f"<td style='text-align:left'>{detail}</td></tr>"
        )
    return "<table>" + "".join(lines) + "</table>"


def settings_table(settings: Settings, *, max_chars: int = 100) -> pl.DataFrame:
    """The settings as a two-column frame, secrets redacted and long values (a large
    ESCROW_ADDR_BY_INVOICE) cut, so the executed notebook stays small and safe to keep."""
    names, values = [], []
    for item in fields(settings):
        value = getattr(settings, item.name)
        if isinstance(value, Secret):
            text = redact_url(value.reveal()) if "url" in item.name else REDACTED
        elif item.name in ("rpc_url", "pushgateway_url") and value:
            text = public_url(value)
        else:
            text = settings.redact("" if value is None else str(value))
        if len(text) > max_chars:
            text = f"{text[:max_chars]}... ({len(text):,} characters)"
        names.append(item.name)
        values.append(text)
    return pl.DataFrame({"setting": names, "value": values})


def class_chart_html(counts: Mapping[str, int], *, width_px: int = 320) -> str:
    """One bar per class, scaled to the largest; counts written beside each bar."""
    return _bar_rows([(name, {name: int(counts.get(name, 0))}) for name in CLASSES], width_px)


def trend_chart_html(trend: pl.DataFrame, *, width_px: int = 320) -> str:
    """One stacked bar per run (oldest first) of the non-match classes: the trend across runs."""
    rows = []
    for run in trend.iter_rows(named=True):
        label = str(run["run_key"]) + (" (this run)" if run.get("current") else "")
        rows.append((label, {name: int(run[name] or 0) for name in CLASSES if name != "match"}))
    return _bar_rows(rows, width_px)


def show_findings_in_full() -> None:
    """Let polars print findings whole in the notebook: every column, up to 100 rows, and
    reasons of any length (the defaults show 10 rows and cut text at about 30 characters)."""
    pl.Config.set_tbl_rows(100)
    pl.Config.set_tbl_cols(-1)
    pl.Config.set_fmt_str_lengths(2_000)
    pl.Config.set_tbl_width_chars(2_000)
    pl.Config.set_fmt_table_cell_list_len(-1)


def keep_no_cell_values() -> None:
    """Stop IPython keeping each cell's displayed value (``Out``, ``_``, ``_N``). A frame shown
    with ``head()`` or ``filter()`` shares the buffers of the whole frame, so the cache kept every
    frame the notebook showed alive after the notebook had dropped it: at 1M invoices, the
    invoices and the findings of classify to the end of the run. A no-op outside IPython."""
    from IPython import get_ipython

    shell = get_ipython()
    if shell is not None:
        shell.displayhook.cache_size = 0


def findings_connection(results: Path) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with ``results`` (the run's ``results.parquet``) as the view
    ``findings``, for the drill-down's SQL. Read from the file as each query needs it: the run
    holds only the findings in memory, not every invoice."""
    conn = duckdb.connect()
    conn.read_parquet(str(results)).create_view("findings")
    return conn


def invoice_detail_html(row: Mapping[str, object]) -> str:
    """One finding as two full-width columns (field, value), every value whole and escaped: the
    drill-down into one invoice, where a 25-column row would be cut."""
    lines = "".join(
        "<tr>"
        f"<th style='text-align:left;vertical-align:top;white-space:nowrap;padding-right:16px'>{escape(name)}</th>"
        f"<td style='text-align:left;white-space:pre-wrap;overflow-wrap:anywhere'>"
        f"{escape('' if value is None else str(value))}</td>"
        "</tr>"
        for name, value in row.items()
    )
    return f"<table style='width:100%;table-layout:auto'>{lines}</table>"
