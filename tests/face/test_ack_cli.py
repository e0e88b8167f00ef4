"""`reconcile-audit ack`, `unack`, `acks` and `summary` as an operator types them."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from typer.testing import CliRunner

from reconcile_audit.compute import persist
from reconcile_audit.compute.persist import RunRecord
from reconcile_audit.compute.schemas import count_classes
from reconcile_audit.face.cli import app
from tests import factories


def stored_night(url: str) -> None:
    rows = [
        factories.finding(
            f"INV-{n}",
            "mismatch",
            tenant_id=tenant,
            reason_code="db_over_chain",
            reason=f"drift on INV-{n}",
            chain_funded_base_units="12000000000",
            delta_base_units="500000000",
        )
        for n, tenant in enumerate(["acme", "acme", "globex"])
    ]
    findings = factories.frame(rows)
    started = datetime.now(UTC) - timedelta(hours=1)
    record = RunRecord(
        counts=count_classes(findings),
        run_key="all:today",
        tenant_id=None,
        started_at=started,
        finished_at=started + timedelta(minutes=5),
        status="completed",
    )
    assert persist.persist_run(url, record, findings).ok


def cli(args: list[str], env: dict[str, str], stdin: str | None = None):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, args, env=env, input=stdin, catch_exceptions=False)


def test_ack_unack_and_acks_move_the_health_and_its_exit_code(tmp_path: Path) -> None:
    url = f"duckdb:///{tmp_path / 'state.duckdb'}"
    env = {"DATABASE_URL": url}
    stored_night(url)
    health = cli(["summary", "--json"], env)
    assert health.exit_code == 1 and json.loads(health.stdout)["unacknowledged"] == 3

    refused = cli(["ack", "INV-0"], env)
    assert refused.exit_code == 2 and "--reason is mandatory" in refused.stderr
    unknown = cli(["ack", "INV-404", "--reason", "x"], env)
    assert unknown.exit_code == 2 and "no open finding matches INV-404" in unknown.stderr
    passed = cli(["ack", "INV-0", "--reason", "x", "--until", "2020-01-01"], env)
    assert passed.exit_code == 2 and "already passed" in passed.stderr

    one = cli(
        ["ack", "INV-0:mismatch/amount", "--reason", "bank delay", "--by", "ana", "--until", "2099-01-01"],
        env,
    )
    assert one.exit_code == 0, one.output
    assert "recorded 1 ack row by ana until 2099-01-01" in one.stdout
    declined = cli(["ack", "--tenant", "acme", "--reason", "all known"], env, stdin="n\n")
    assert declined.exit_code == 2 and "acknowledge 2 findings of tenant 'acme'" in declined.stdout
    bulk = cli(
        ["ack", "--tenant", "globex", "--reason-code", "db_over_chain", "--reason", "known", "--by", "bo"],
        env,
        stdin="y\n",
    )
    assert bulk.exit_code == 0 and "recorded 1 ack row" in bulk.stdout

    listed = cli(["acks", "--json"], env)
    holding = [json.loads(line) for line in listed.stdout.splitlines()]
    assert {(row["finding_id"], row["acked_by"]) for row in holding} == {
        ("INV-0:mismatch/amount", "ana"),
        ("INV-2:mismatch/amount", "bo"),
    }
    health = json.loads(cli(["summary", "--json"], env).stdout)
    assert (health["status"], health["unacknowledged"], health["acknowledged"]) == ("findings", 1, 2)

    assert cli(["ack", "INV-1", "--reason", "known", "--by", "ana"], env).exit_code == 0
    healthy = cli(["summary", "--json"], env)
    assert healthy.exit_code == 0 and json.loads(healthy.stdout)["status"] == "healthy"

    withdrawn = cli(["unack", "INV-1", "--reason", "not ours after all", "--by", "ana"], env)
    assert withdrawn.exit_code == 0 and "recorded 1 unack row" in withdrawn.stdout
    assert cli(["summary", "--json"], env).exit_code == 1
    every = cli(["acks", "--all", "--json"], env)
    assert [json.loads(line)["action"] for line in every.stdout.splitlines()] == [
        "ack",
        "ack",
        "ack",
        "unack",
    ]
