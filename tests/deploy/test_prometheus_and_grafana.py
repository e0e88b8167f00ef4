"""deploy/: the alert rules pass promtool's own unit tests, and every PromQL expression of the
rules and the Grafana dashboard parses and names only metrics the tool exports."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest

from reconcile_audit.compute.schemas import AuditStatus
from reconcile_audit.output.metrics import RunMetricsInput, build_registry
from tests.services import require_binary

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
RULES_TEST = ROOT / "deploy" / "prometheus" / "rules_test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "escrow-reconciliation.json"
# A metric name, not part of a recording rule's level:name:operations.
METRIC = re.compile(r"(?<![:\w])(escrow_reconciliation_[a-z_]+)(?![:\w])")
RECORDED = re.compile(r"\b[a-z_]+:[a-z_:]+\b")


def exported_metrics() -> set[str]:
    """Every sample name a run can push: a run that sets every field, and a failed one."""
    full = RunMetricsInput(
        success=True,
        finished_at_epoch=1.0,
        duration_seconds=1.0,
        status=AuditStatus.FINDINGS,
        cumulative_mismatches=1,
        class_counts={"mismatch": 1},
        stage_seconds={"extract": 1.0},
        findings_by_age={("0-1", "new"): 1},
        unacknowledged=1,
        stranded=1,
        email_bytes=1,
        email_failed=True,
    )
    names = set()
    for line in generate_latest(build_registry(full)).decode().splitlines():
        if line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    binary = require_binary("promtool")
    return subprocess.run([binary, *args], capture_output=True, text=True, check=False, cwd=cwd, timeout=60)


def test_promtool_checks_the_rules() -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    tested = promtool("test", "rules", RULES_TEST.name, cwd=RULES_TEST.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_the_rules_cover_every_case_the_issue_names() -> None:
    names = {test["name"] for test in yaml.safe_load(RULES_TEST.read_text())["tests"]}
    for case in (
        "first night with mismatches",
        "a night with no mismatch",
        "per-tenant pushes in any order",
        "a missing series",
        "a job that stopped succeeding",
        "a failed run",
        "an incomplete run",
        "email failures",
    ):
        assert case in names


def _rule_expressions() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def _dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_every_metric_the_rules_and_dashboard_name_is_exported() -> None:
    exported = exported_metrics()
    groups = yaml.safe_load(RULES.read_text())["groups"]
    recorded = {rule["record"] for group in groups for rule in group["rules"] if "record" in rule}
    for expression in [*_rule_expressions(), *_dashboard_expressions()]:
        for name in METRIC.findall(expression):
            assert name in exported, f"{name} in {expression!r} is not a metric the tool exports"
        for name in RECORDED.findall(expression):
            assert name in recorded, f"{name} in {expression!r} is not recorded by rules.yml"


def test_every_dashboard_expression_parses(tmp_path: Path) -> None:
    """Grafana's own syntax ($tenant) is replaced by what it expands to, then promtool parses each
    expression as a recording rule."""
    expressions = _dashboard_expressions()
    assert len(expressions) >= 8
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:panel_{index}", "expr": expression.replace("$tenant", ".*")}
                    for index, expression in enumerate(expressions)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    checked = promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_dashboard_shows_what_ops_asked_for() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    text = json.dumps(dashboard)
    for metric in (
        "escrow_reconciliation_invoices",  # classes per run
        "escrow_reconciliation_findings",  # findings by age
        "escrow_reconciliation_run_duration_seconds",
        "escrow_reconciliation_stage_duration_seconds",
        "escrow_reconciliation_last_success_timestamp_seconds",
        "escrow_reconciliation_stranded_escrows",  # finance's list outside the audit
    ):
        assert metric in text
    assert any(variable["name"] == "tenant" for variable in dashboard["templating"]["list"])


@pytest.mark.parametrize("path", [RULES])
def test_the_readme_quotes_the_rules_file_whole(path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    assert path.read_text() in readme, (
        "README.md's copy of the rules drifted from deploy/prometheus/rules.yml"
    )
