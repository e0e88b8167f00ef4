from __future__ import annotations

import re
import struct
import subprocess
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import jinja2
import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconcile_audit.compute import explain
from reconcile_audit.compute.amounts import format_base_units, format_decimal
from reconcile_audit.compute.result import AuditResult
from reconcile_audit.compute.schemas import CLASSES, FINDINGS, STRANDED
from reconcile_audit.compute.stranded import Stranded
from reconcile_audit.output.deliver import build_email, findings_attachment
from reconcile_audit.output.report import BAR_MAX_PX, Report, environment, render_report, worst_first
from reconcile_audit.output.summary import RunSummary
from tests import factories
from tests.factories import facts, finding, frame, history_for, mismatch, realistic_rows
from tests.services import require_binary, view_in_chromium

SECTIONS_HTML = (
    "Escrow reconciliation: FINDINGS",
    "Invoices by class",
    "Needs a person",
    "New findings",
    "Reopened findings",
    "Persisting, not acknowledged",
    "Acknowledged (",
    "Resolved since the previous run",
    "Findings, worst first",
    "Escrows outside the audit that still hold funds",
    "Archived and TTL-expiring escrows",
    "Trend of the last",
    "the executed notebook",
)


def realistic_report(**kwargs: object) -> Report:
    findings = frame(realistic_rows())
    history = history_for(
        findings,
        persisting={"INV-2026-10001": 4, "INV-2026-10005": 12},
        resolved=[("INV-2026-00999", "mismatch", "DB 10.00 USDC vs chain 9.00 USDC (chain under)")],
    )
    return render_report(AuditResult.of(findings), history, facts(), **kwargs)  # type: ignore[arg-type]


def positions(haystack: str, needles: tuple[str, ...]) -> list[int]:
    found = [haystack.find(n) for n in needles]
    assert -1 not in found, [n for n, p in zip(needles, found, strict=True) if p == -1]
    return found


def assert_email_safe(html: str) -> None:
    lowered = html.lower()
    for banned in ("<script", "<svg", "data:", "<link", "<img", "<iframe", "@import", "javascript:"):
        assert banned not in lowered, banned
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", lowered), "external request"
    assert "<style" not in lowered  # inlined, then removed
    assert 'style="' in html


def test_content_in_the_documented_order() -> None:
    report = realistic_report()
    html_pos = positions(report.html, SECTIONS_HTML)
    assert html_pos == sorted(html_pos)
    text_needles = (
        "ESCROW RECONCILIATION: FINDINGS",
        "INVOICES BY CLASS",
        "NEEDS A PERSON",
        "New findings",
        "Persisting, not acknowledged",
        "Resolved since the previous run",
        "FINDINGS, WORST FIRST",
        "ARCHIVED AND TTL-EXPIRING ESCROWS",
        "TREND OF THE LAST",
        "Audit record: the executed notebook, notebook.ipynb, in the run folder",
    )
    text_pos = positions(report.text, text_needles)
    assert text_pos == sorted(text_pos)
    assert_email_safe(report.html)


def test_run_facts_counts_and_changes() -> None:
    report = realistic_report()
    for fact in (
        "20261124T020003Z-acme",
        "2026-11-24 02:00:03 UTC",
        "51,234,005 to 51,234,019",
        "1 min 14 s",
        "0.1.0",
    ):
        assert fact in report.html and fact in report.text
    assert dict(report.counts) == {
        "match": 42,
        "mismatch": 3,
        "missing_on_chain": 1,
        "unlinked": 1,
        "error": 1,
        "total": 48,
    }
    # The previous run (last trend row: i = 28) had 40 match, 3 mismatch, 1 missing, 1 unlinked, 1 error.
    assert re.search(r"Match</td><td[^>]*>42</td><td[^>]*>\+2</td>", report.html)
    assert re.search(r"Mismatch</td><td[^>]*>3</td><td[^>]*>no change</td>", report.html)
    assert "Match                       42   change: +2" in report.text
    assert report.subject == (
        "[reconcile-audit] FINDINGS: 3 mismatch, 1 missing on chain, 1 error, 1 unlinked of 48 invoices (tenant acme)"
    )


def test_new_persisting_resolved_and_worst_first() -> None:
    report = realistic_report()
    text = report.text
    new = text[text.index("New findings") : text.index("Persisting, not acknowledged")]
    assert "INV-2026-10003" in new and "INV-2026-10001" not in new
    persisting = text[text.index("Persisting, not acknowledged") : text.index("Resolved since")]
    assert persisting.index("INV-2026-10005") < persisting.index("INV-2026-10001")  # oldest first
    assert "for 12 days, first seen 2026-11-12" in persisting
    assert "INV-2026-00999 [was Mismatch, now matches]" in text
    worst = text[text.index("FINDINGS, WORST FIRST") : text.index("ARCHIVED AND")]
    order = [worst.index(i) for i in ("INV-2026-10003", "INV-2026-10002", "INV-2026-10001", "INV-2026-10004")]
    assert order == sorted(order)
    assert "DB over by 50,000.00 USDC" in worst
    assert "DB over by 0.01 USDC" in worst
    expiry = text[text.index("ARCHIVED AND") : text.index("TREND OF")]
    assert "INV-2026-10003" in expiry and "Archived: needs restore" in expiry
    assert "INV-2026-10007" in expiry and "9,000 ledgers left" in expiry
    assert report.findings_shown == 6 and report.findings_omitted == 0


def test_trend_bars_are_table_cells_sized_by_counts() -> None:
    report = realistic_report()
    widths = [int(w) for w in re.findall(r'<td[^>]*class="bar-mismatch"[^>]*width="(\d+)"', report.html)]
    widths += [int(w) for w in re.findall(r'<td[^>]*width="(\d+)"[^>]*class="bar-mismatch"', report.html)]
    assert widths and max(widths) <= BAR_MAX_PX
    # The largest run (7 findings, 4 of them mismatches) draws 4/7 of the full bar in red.
    assert round(4 * BAR_MAX_PX / 7) in widths
    assert "(this run)" in report.html
    assert len(re.findall(r"\(this run\)", report.text)) == 1
    trend = report.text[report.text.index("TREND OF THE LAST 30 RUNS") : report.text.index("Audit record")]
    assert trend.count("  2026-1") == 30  # 29 earlier runs and this one


def test_hostile_ids_render_as_text() -> None:
    hostile = "<script>alert(1)</script>"
    quotes = "\"'><b onmouseover=alert(2)>x"
    rows = [mismatch(hostile, 100, 5, drift_rank=1), finding(quotes, "error", reason=f"bad id {quotes}")]
    report = render_report(AuditResult.of(frame(rows)), None, facts(tenant_id="<i>t</i>"))
    assert "<script" not in report.html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in report.html
    assert "<b onmouseover" not in report.html
    assert "&lt;b onmouseover=alert(2)&gt;x" in report.html
    assert "<i>t</i>" not in report.html
    assert hostile in report.text  # the text part is plain text: it shows the id as it is
    assert_email_safe(report.html)


def test_database_flags_are_explained_beside_the_finding() -> None:
    rows = [
        mismatch("INV-NULL", 0, 5, drift_rank=1, flags=["null_total"]),
        mismatch("INV-DUP", 100, 5, drift_rank=2, flags=["duplicate_summary", "ttl_expiring"]),
        mismatch("INV-PLAIN", 100, 6, drift_rank=3),
    ]
    report = render_report(AuditResult.of(frame(rows)), None, facts())
    for text in (report.html, report.text):
        assert "no funded total for this invoice (no summary row, or NULL): read as 0" in text
        assert "several escrow_summaries rows for this invoice: the latest was used" in text
        assert text.count("Note: ") == 2  # the plain mismatch carries no note; TTL has its own section


def test_control_characters_cannot_break_text_lines() -> None:
    report = render_report(AuditResult.of(frame([mismatch("A\nB", 100, 5, drift_rank=1)])), None, facts())
    assert "A\\nB" in report.text and "A\\nB" in report.html


@pytest.mark.slow
def test_one_hundred_thousand_findings_fit_the_email_budget() -> None:
    rows = [
        mismatch(f"INV-{i:06d}", 100_000 + i, 1_000_000_000 + i, flags=["archived"] if i % 7 == 0 else [])
        for i in range(100_000)
    ]
    findings = frame(rows).with_columns(
        pl.col("delta_base_units")
        .cast(pl.Int128)
        .abs()
        .rank("ordinal", descending=True)
        .cast(pl.Int64)
        .alias("drift_rank")
    )
    history = history_for(findings, persisting={f"INV-{i:06d}": i % 40 for i in range(0, 100_000, 2)})
    report = render_report(AuditResult.of(findings), history, facts())
    assert report.html_bytes == len(report.html.encode()) < 100_000
    assert 0 < report.findings_shown < 100_000
    assert report.findings_shown + report.findings_omitted == 100_000
    omitted = f"{report.findings_omitted:,} more not shown"
    assert omitted in report.html and omitted in report.text
    assert "the full list is in findings.csv" in report.html
    # The cut is the longest that fits: one more row per list would not.
    bigger = render_report(AuditResult.of(findings), history, facts(), max_bytes=report.html_bytes + 1)
    assert bigger.findings_shown == report.findings_shown
    assert_email_safe(report.html)
    # The worst drift comes first.
    worst = findings.sort("drift_rank")["invoice_id"][0]
    assert report.text.index(worst) < report.text.index("more not shown")


def test_a_tight_budget_cuts_and_says_so() -> None:
    findings = frame(realistic_rows())
    full = render_report(AuditResult.of(findings), None, facts())
    cut = render_report(AuditResult.of(findings), None, facts(), max_bytes=full.html_bytes - 1)
    assert cut.html_bytes <= full.html_bytes - 1
    assert cut.findings_shown < 6 and cut.findings_omitted == 6 - cut.findings_shown
    assert "more not shown" in cut.html


def test_clean_failed_and_no_history_reports() -> None:
    clean = render_report(AuditResult.of(frame([finding("A"), finding("B")])), None, facts(status="clean"))
    assert "Escrow reconciliation: CLEAN" in clean.html and "All 2 invoices match the chain." in clean.text
    assert "History is not available" in clean.html
    assert clean.subject.startswith("[reconcile-audit] CLEAN: all match of 2 invoices")

    failed = render_report(
        None,
        None,
        facts(
            status="failed", failure_message="connect to postgresql://u:hunter2@db failed", ledger_min=None
        ),
        redact=lambda s: s.replace("hunter2", "***"),
    )
    assert "Escrow reconciliation: FAILED" in failed.html
    assert "hunter2" not in failed.html and "hunter2" not in failed.text
    assert "postgresql://u:***@db" in failed.text
    assert "Not available: the run failed before classifying." in failed.html
    assert failed.subject.startswith("[reconcile-audit] FAILED")
    assert_email_safe(failed.html)


def test_persist_error_and_delivery_notes_are_shown() -> None:
    report = render_report(
        AuditResult.of(frame(realistic_rows())),
        None,
        facts(persist_error="PersistError: relation is locked", delivery_notes=("email failed: refused",)),
    )
    assert "Not persisted:" in report.html and "relation is locked" in report.text
    assert "email failed: refused" in report.html


def test_strict_undefined_catches_a_missing_variable() -> None:
    env = environment()
    assert env.undefined is jinja2.StrictUndefined
    for name in ("report.html.j2", "report.txt.j2"):
        with pytest.raises(jinja2.UndefinedError):
            env.get_template(name).render({"status": "clean", "status_word": "CLEAN"})


def test_autoescape_is_on_for_html_only() -> None:
    env = environment()
    assert env.autoescape("report.html.j2") is True  # type: ignore[operator]
    assert env.autoescape("report.txt.j2") is False  # type: ignore[operator]


@given(
    n=st.integers(min_value=-(2**127), max_value=2**127 - 1), decimals=st.integers(min_value=0, max_value=38)
)
def test_amount_formatting_is_exact_against_decimal(n: int, decimals: int) -> None:
    shown = format_base_units(str(n), decimals)
    back = Decimal(shown.replace(",", "").replace("\u2212", "-"))
    assert back == Decimal(f"{n}E-{decimals}")
    if decimals >= 2:
        assert re.fullmatch(r"\u2212?\d{1,3}(,\d{3})*\.\d{2,}", shown)


def test_amount_formatting_examples() -> None:
    assert format_base_units("12500000000", 7) == "1,250.00"
    assert format_base_units("12499900001", 7) == "1,249.9900001"
    assert format_base_units("-5", 7) == "\u22120.0000005"
    assert format_base_units("5", 7, signed=True) == "+0.0000005"
    assert format_base_units("0", 7, signed=True) == "0.00"
    assert format_base_units("123", None) == "123 base units"
    assert format_base_units("12x", 2) == "n/a"
    assert format_decimal("1234567890123.45") == "1,234,567,890,123.45"
    assert format_decimal("155560.584999") == "155,560.584999"
    assert format_decimal("1,250.00") == "n/a"
    assert format_decimal("-0.10") == "\u22120.10"


def test_summary_json_round_trip() -> None:
    report = realistic_report()
    summary = RunSummary.from_run(facts(), report.counts, report)
    again = RunSummary.from_json(summary.to_json())
    assert again == summary
    data = summary.to_dict()
    assert data["status"] == "findings" and data["total"] == 48
    assert set(data["counts"]) == set(CLASSES)


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


def chromium(page: Path, profile: Path, *action: str, width: int = 1200, height: int = 2600) -> str:
    """Headless Chromium on ``page`` with ``action`` (``--screenshot=...`` or ``--dump-dom``); stdout."""
    binary = require_binary("chromium")
    done = subprocess.run(
        [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            *action,
            page.resolve().as_uri(),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.stdout


def screenshot(html: Path, png: Path, profile: Path, height: int = 2600, width: int = 1200) -> None:
    chromium(html, profile, f"--screenshot={png}", width=width, height=height)


@pytest.mark.slow
def test_chromium_renders_the_report(tmp_path: Path) -> None:
    html = tmp_path / "report.html"
    html.write_text(realistic_report().html, encoding="utf-8")
    png = tmp_path / "report.png"
    screenshot(html, png, tmp_path / "profile")
    assert png.exists() and png.stat().st_size > 50_000  # a blank page is a few kB
    assert _png_size(png) == (1200, 2600)


def test_secondary_lists_are_capped_so_the_ranked_list_keeps_the_budget() -> None:
    rows = [mismatch(f"INV-{i:04d}", 100_000 + i, 1_000_000_000, drift_rank=120 - i) for i in range(120)]
    findings = frame(rows)
    report = render_report(AuditResult.of(findings), history_for(findings), facts())
    assert report.findings_shown == 120 and report.findings_omitted == 0
    text = report.text
    new = text[text.index("New findings") : text.index("Reopened findings")]
    assert new.count("  - INV-") == 50
    assert "70 more not itemised; every finding is in findings.csv." in text
    assert "70 more not itemised</b> (of 120)" in report.html


def test_a_trend_without_the_current_run_gets_it_appended() -> None:
    findings = frame(realistic_rows())
    history = history_for(findings, runs=3)
    earlier = history.trend.filter(~pl.col("current")).drop("current")
    report = render_report(AuditResult.of(findings), replace(history, trend=earlier), facts())
    trend = report.text[report.text.index("TREND OF THE LAST 4 RUNS") : report.text.index("Audit record")]
    assert trend.count("(this run)") == 1
    assert "2026-11-24 02:00 (this run)  invoices 48, findings 6" in trend


def test_history_warning_is_shown() -> None:
    findings = frame(realistic_rows())

    @dataclass(frozen=True)
    class Degraded:
        findings: pl.DataFrame
        resolved: pl.DataFrame
        trend: pl.DataFrame
        previous_counts: None = None
        warning: str = "state database postgresql://u:pw@db unreachable"

    base = history_for(findings, runs=0)
    report = render_report(
        AuditResult.of(findings),
        Degraded(base.findings, base.resolved, base.trend),
        facts(),
        redact=lambda s: s.replace("pw", "***"),
    )
    assert "History incomplete:" in report.html and "postgresql://u:***@db unreachable" in report.text
    assert "pw@" not in report.html
    assert "No previous run to compare with." in report.text


def test_malformed_amount_text_never_crashes_the_report() -> None:
    rows = [
        finding("BAD-1", "mismatch", drift_rank=1, chain_funded_base_units="12abc", delta_base_units="x"),
        finding("HUGE-1", "mismatch", drift_rank=2, chain_funded_base_units="9" * 5000, token_decimals=None),
        finding("DIGITS-1", "mismatch", drift_rank=3, chain_funded_base_units="\u0661\u0662"),
    ]
    report = render_report(AuditResult.of(frame(rows)), None, facts())
    worst = report.text[report.text.index("FINDINGS, WORST FIRST") :]
    assert "BAD-1 (tenant acme) [Mismatch] DB 1,250.00, chain n/a" in worst
    assert "HUGE-1 (tenant acme) [Mismatch] DB 1,250.00, chain n/a" in worst
    assert "BAD-1 (tenant acme) [Mismatch] DB 1,250.00, chain n/a\n" in worst  # no drift claimed
    assert "DIGITS-1 (tenant acme) [Mismatch] DB 1,250.00, chain n/a" in worst


def test_samples_conform_to_the_findings_schema() -> None:
    findings = frame(realistic_rows())
    assert findings.schema == FINDINGS
    assert set(findings["class"]) == set(CLASSES)
    history = history_for(findings, persisting={"INV-2026-10001": 4})
    assert history.findings.filter(pl.col("finding_state") == "persisting")["age_days"].to_list() == [4]


def test_an_empty_scope_says_so_in_words() -> None:
    report = render_report(AuditResult.empty(), None, facts(status="clean", tenant_id="acme"))
    assert "0 invoices in scope" in report.html and "0 invoices in scope" in report.text


def test_the_report_and_summary_say_whether_currencies_were_checked() -> None:
    findings = AuditResult.of(frame([finding("A")]))
    unchecked = render_report(findings, None, facts())
    assert "not checked against funding tokens (RECONCILE_CURRENCY_TOKENS is not set)" in unchecked.text
    assert "not checked against funding tokens" in unchecked.html
    checked_facts = facts(currencies_checked=("EUR", "USD"))
    checked = render_report(findings, None, checked_facts)
    assert "funding token checked for EUR, USD" in checked.text
    summary = RunSummary.from_run(checked_facts, checked.counts, checked)
    assert summary.to_dict()["currencies_checked"] == ["EUR", "USD"]
    assert RunSummary.from_json(summary.to_json()) == summary
    assert RunSummary.from_run(facts(), unchecked.counts, unchecked).to_dict()["currencies_checked"] is None


# Where the email screenshots are kept for a reviewer to look at (build/ is not committed).
SCREENSHOTS = Path(__file__).resolve().parents[2] / "build" / "email"


@pytest.mark.slow
@pytest.mark.parametrize("width", [375, 1000])
def test_the_email_reads_at_375_and_1000_px_without_horizontal_scroll(tmp_path: Path, width: int) -> None:
    """The HTML part of the email, as sent, in headless Chromium: nothing is wider than the screen.

    The findings carry what once widened the page to 888 px: a 56-character contract address, a
    long unbroken invoice id, long reasons and the trend bars.
    """
    rows = [
        *realistic_rows(),
        finding("INV-" + "X" * 120, "error", reason="invalid invoice id " + "Y" * 200),
    ]
    findings = frame(rows)
    report = render_report(AuditResult.of(findings), history_for(findings, runs=5), facts())
    settings = factories.settings(alert_email_to="Finance <finance@example.test>")
    message = build_email(settings, report, facts(), findings_attachment(findings, 5_000_000))
    html_part = message.get_body(("html",))
    assert html_part is not None
    html = html_part.get_content()
    assert "<script" not in html.lower() and "<svg" not in html.lower() and len(html.encode()) < 100_000
    page = tmp_path / "email.html"
    page.write_text(html, encoding="utf-8")
    view = view_in_chromium(page, width, 2400, tmp_path / "profile")
    assert view.inner_width == width
    assert view.scroll_width <= view.inner_width, (
        f"the email is {view.scroll_width} px wide on a {width} px screen"
    )
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    png = SCREENSHOTS / f"email-{width}.png"
    png.write_bytes(view.png)
    assert _png_size(png) == (width, 2400)


def test_footer_links_are_absolute_under_a_base_url_and_never_dead_without_one() -> None:
    findings = frame(realistic_rows())
    plain = render_report(
        AuditResult.of(findings), None, facts(run_folder="audit-host:/var/lib/reconcile/r1")
    )
    assert "href=" not in plain.html.split('class="foot"', 1)[1]  # no relative link that leads nowhere
    assert "in the run folder audit-host:/var/lib/reconcile/r1" in plain.html
    assert "in the run folder audit-host:/var/lib/reconcile/r1" in plain.text
    published = render_report(
        AuditResult.of(findings), None, facts(report_base_url="https://reports.example.test/reconcile/")
    )
    base = "https://reports.example.test/reconcile/20261124T020003Z-acme"
    for name in ("notebook.ipynb", "findings.csv", "results.parquet", "summary.json"):
        assert f'href="{base}/{name}"' in published.html
        assert f"{base}/{name}" in published.text


def test_money_missing_from_an_escrow_ranks_first_whatever_its_size() -> None:
    rows = [
        mismatch("BIG-DRIFT", 5_000_000, 0, drift_rank=1),
        finding(
            "SHORT-BY-ONE",
            "mismatch",
            reason_code="balance_short",
            reason="the escrow holds 1,249.9999999 USDC, 0.0000001 short of the 1,250.00 status funded requires",
            chain_balance_base_units="12499999999",
            custodial=True,
        ),
    ]
    report = render_report(AuditResult.of(frame(rows)), None, facts())
    worst = report.text[report.text.index("FINDINGS, WORST FIRST") :]
    assert worst.index("SHORT-BY-ONE") < worst.index("BIG-DRIFT")
    assert worst_first(frame(rows))["invoice_id"].to_list() == ["SHORT-BY-ONE", "BIG-DRIFT"]


def test_the_report_says_which_escrow_checks_ran() -> None:
    findings = AuditResult.of(frame([finding("A")]))
    ran = render_report(findings, None, facts(database_sides_compared=True, balances_checked=9_983)).text
    assert "9,983 custodial escrows held to their status" in ran
    assert "total_released, available_amount and the synced ledger compared" in ran
    assert "escrows changed during the sweep" not in ran
    reread = render_report(findings, None, facts(reread=3)).text
    assert "3 escrows changed during the sweep and were read again" in reread
    skipped = render_report(findings, None, facts(database_sides_compared=False, balances_checked=0)).text
    assert "not compared: the source has no total_released" in skipped
    assert "none read: no custodial escrow" in skipped


def test_a_finding_that_changed_during_the_sweep_says_so() -> None:
    rows = [mismatch("MOVED-1", 125_000, 1, drift_rank=1, flags=["changed_during_run"])]
    report = render_report(AuditResult.of(frame(rows)), None, facts())
    assert "the escrow changed while the sweep read it" in report.text


def _stranded(n: int) -> pl.DataFrame:
    row = {name: None for name in STRANDED}
    return pl.DataFrame(
        [
            row
            | {
                "invoice_id": f"GONE-{i:03d}",
                "tenant_id": "acme",
                "status": "funded",
                "deleted_at": "2026-11-20 10:00:00+00",
                "contract_id": "C" + "A" * 55,
                "reason_code": "stranded_funds" if i else "stranded_unread",
                "reason": f"Invoice deleted, but its escrow holds {i}.00 USDC",
                "token_decimals": 7,
                "token_symbol": "USDC",
                "chain_balance_base_units": str(i * 10**7),
                "chain_owed_base_units": str(i * 10**7) if i % 2 else None,
            }
            for i in range(n)
        ],
        schema=STRANDED,
    )


def test_stranded_escrows_have_their_own_section_outside_the_classes() -> None:
    result = AuditResult.of(frame([finding("A")]), stranded=Stranded(_stranded(60), checked=900))
    report = render_report(result, None, facts())
    assert report.counts["total"] == 1  # they never count as invoices
    section = report.text.split("ESCROWS OUTSIDE THE AUDIT THAT STILL HOLD FUNDS (60)", 1)[1]
    # Known money first, what could not be read last; past the cap, the rest is in its own file.
    listed = section.split("ARCHIVED", 1)[0]
    assert listed.index("GONE-001") < listed.index("GONE-002") and "GONE-000" not in listed
    assert "10 more not shown (of 60); the full list is in stranded.parquet" in listed
    assert (
        "59 of 900 out-of-scope invoices' escrows still hold or owe funds; 1 could not be read" in report.text
    )
    assert "Escrow holds 1.00 USDC · Owes investors 1.00 USDC<br>" in report.html
    few = render_report(
        AuditResult.of(frame([finding("A")]), stranded=Stranded(_stranded(3), checked=3)), None, facts()
    )
    listed = few.text.split("ESCROWS OUTSIDE THE AUDIT THAT STILL HOLD FUNDS (3)", 1)[1].split("ARCHIVED", 1)[
        0
    ]
    assert listed.index("GONE-002") < listed.index("GONE-000") and "it may" not in listed
    assert_email_safe(report.html)


def test_stranded_escrows_not_checked_is_said_not_none() -> None:
    why = "a custom extract query is configured (mine.sql), and only the packaged query's scope is known"
    result = AuditResult.of(frame([finding("A")]), stranded=Stranded.not_checked(why))
    text = render_report(result, None, facts()).text
    assert f"not checked: {why}" in text
    section = text.split("ESCROWS OUTSIDE THE AUDIT THAT STILL HOLD FUNDS (0)", 1)[1].split("ARCHIVED")[0]
    assert "Not checked this run" in section and "None." not in section


def test_every_fact_label_in_the_text_report_is_followed_by_a_space() -> None:
    """The longest label ("Outside the audit:") must not run into its value."""
    text = render_report(AuditResult.of(frame([finding("A")])), None, facts()).text
    facts_block = text.split("INVOICES BY CLASS", 1)[0]
    for label in ("Run", "Ledger range", "Escrow balances", "Database sides", "Outside the audit"):
        assert re.search(rf"^{label}: +\S", facts_block, re.MULTILINE), (label, facts_block)


def _explained_run(n: int) -> AuditResult:
    """``n`` explained drifts, each with a transaction and an event behind it."""
    rows = [
        mismatch(
            f"INV-{k}",
            100_00,
            1_050_000_000 - k,
            drift_rank=k + 1,
            explanation=f"fund of 5.00 USDC in tx {k:02d}… landed <b>",
        )
        for k in range(n)
    ]
    result = AuditResult.of(frame(rows))
    events = pl.DataFrame(
        [
            {
                "invoice_id": f"INV-{k}",
                "contract_id": factories.CONTRACT,
                "reason_code": "chain_over_db",
                "source": source,
                "ledger": 1_990_000 + k,
                "closed_at": datetime(2026, 12, 5, 14, 2, tzinfo=UTC),
                "event": "escrow_funded" if source == "event" else "fund",
                "amount_base_units": "50000000",
                "token_decimals": 7,
                "currency": "USDC",
                "investor": "GBY6ABCDEFGHIJKLMNOPQRSTUVWXYZ234567ABCDEFGHIJKLMNYYN6"
                if source == "event"
                else None,
                "tx_hash": "3f2a" + "0" * 60,
                "tx_status": None if source == "event" else "SUCCESS",
                "db_status": None if source == "event" else "failed",
                "note": "n",
            }
            for k in range(n)
            for source in ("transaction", "event")
        ],
        schema=explain.DRIFT_EVENTS,
    )
    explanations = pl.DataFrame(
        [
            {"invoice_id": f"INV-{k}", "explanation": r["explanation"], "explain_outcome": "explained"}
            for k, r in enumerate(rows)
        ],
        schema=explain.EXPLANATIONS,
    )
    return result.with_explanations(explain.Explained(explanations, events, considered=n))


def test_each_finding_says_why_with_its_timeline_under_the_worst() -> None:
    result = _explained_run(12)
    report = render_report(result, None, facts(explained={"explained": 12, "beyond": 0}))
    assert report.html.count("Why: fund of 5.00 USDC in tx") == 12
    assert "&lt;b&gt;" in report.html and "landed <b>" not in report.html  # chain-derived text is escaped
    # The ten worst findings show their timeline: ledger, time, what, amount, investor, tx.
    assert report.html.count('class="tl"') == 2 * 10
    assert "Ledger 1,990,000 · 2026-12-05 14:02 UTC" in report.html
    assert "fund (tx SUCCESS, DB: failed)" in report.html and "investor GBY6…YYN6" in report.html
    assert "tx 3f2a0000…" in report.html and "5.00 USDC" in report.html
    assert "Drift causes" in report.text and "12 mismatches looked up on chain: 12 explained" in report.text
    assert "| ledger 1,990,000, 2026-12-05 14:02 UTC: escrow_funded 5.00 USDC" in report.text
    assert_email_safe(report.html)
    email = render_report(result, None, facts(), email=True)
    assert email.html.count('class="tl"') == 2 * 3  # the email keeps three timelines
    assert "Drift causes" in email.text and "not looked for" in email.text


def test_a_persisting_finding_quotes_what_explained_it_the_night_before() -> None:
    findings = frame([mismatch("INV-1", 100_00, 1_050_000_000, drift_rank=1)])
    history = history_for(findings, persisting={"INV-1": 1})
    history = replace(
        history,
        findings=history.findings.with_columns(
            pl.lit("fund in tx 3f2a… landed").alias("previous_explanation")
        ),
    )
    report = render_report(AuditResult.of(findings), history, facts())
    assert (
        "Explained in the previous run: fund in tx 3f2a… landed; still unreconciled in the database."
        in report.html
    )
    assert (
        "Explained in the previous run: fund in tx 3f2a… landed; still unreconciled in the database."
        in report.text
    )


def test_timelines_fit_the_email_budget() -> None:
    result = _explained_run(400)
    report = render_report(result, None, facts(), max_bytes=100_000, email=True)
    assert report.html_bytes <= 100_000
    assert report.findings_shown < 400
