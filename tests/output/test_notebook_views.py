"""The notebook's own views: the analyst sees findings and one invoice whole."""

from __future__ import annotations

from html import escape
from pathlib import Path

import polars as pl

from reconcile_audit.output import notebook_views
from tests.factories import finding, frame


def test_one_invoice_shows_every_field_whole_and_escaped() -> None:
    reason = "the escrow at C" + "A" * 55 + " belongs to invoice 'X', not 'Y'; " + "detail " * 40
    row = frame([finding("<b>INV-1</b>", "mismatch", reason=reason)]).row(0, named=True)
    html = notebook_views.invoice_detail_html(row)
    assert html.count("<tr>") == len(row)  # one line per field: nothing dropped
    assert escape(reason) in html  # nothing cut
    assert "&lt;b&gt;INV-1&lt;/b&gt;" in html and "<b>INV-1</b>" not in html
    assert "width:100%" in html


def test_findings_tables_print_reasons_whole() -> None:
    long_reason = "DB 1,250.00 USDC vs chain 1,249.99 USDC (chain under by 0.01); " + "more " * 30
    findings = pl.DataFrame({"invoice_id": [f"INV-{i}" for i in range(24)], "reason": [long_reason] * 24})
    with pl.Config():
        notebook_views.show_findings_in_full()
        printed = str(findings)
    assert long_reason.strip() in printed
    assert "INV-23" in printed and "…" not in printed


def test_the_notebook_keeps_no_displayed_value_alive() -> None:
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    try:
        shell.run_cell("frame = [1, 2, 3]", store_history=True)
        shell.run_cell("frame", store_history=True)
        assert shell.user_ns["Out"] and shell.user_ns["_"] == [1, 2, 3]  # IPython's default keeps it
        shell.run_cell(
            "from reconcile_audit.output import notebook_views; notebook_views.keep_no_cell_values()"
        )
        shell.run_cell("shown = {'rows': 1}\nshown", store_history=True)
        kept = [value for value in shell.user_ns["Out"].values() if value == {"rows": 1}]
        assert not kept and shell.user_ns["_"] != {"rows": 1}
    finally:
        InteractiveShell.clear_instance()


def test_the_drill_down_connection_reads_the_findings_as_they_are(tmp_path: Path) -> None:
    # Long strings, nulls and a list column, as results.parquet has: every value comes back.
    first = frame([finding("INV-1"), finding("INV-2", "mismatch", tenant_id=None, flags=["archived"])])
    second = frame([finding("INV-3", reason="a reason long enough not to fit in a string view " * 3)])
    findings = pl.concat([first, second], rechunk=False)
    findings.write_parquet(tmp_path / "results.parquet")
    conn = notebook_views.findings_connection(tmp_path / "results.parquet")
    back = conn.sql("SELECT * FROM findings ORDER BY invoice_id").pl()
    assert back.schema == findings.schema
    assert back.equals(findings)
    tenant = conn.sql("SELECT count(*) FROM findings WHERE tenant_id IS NOT DISTINCT FROM $1", params=[None])
    assert tenant.fetchall() == [(1,)]
