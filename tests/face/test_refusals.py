"""Runs that must not happen: no source database means no audit, never a demo in its place."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

from typer.testing import CliRunner

from reconcile_audit.compute import db, persist
from reconcile_audit.face.cli import app

UNSET = {
    "DATABASE_URL": "",
    "RECONCILE_STATE_DATABASE_URL": "",
    "SOROBAN_RPC_URL": "",
    "ALERT_EMAIL_TO": "",
    "PUSHGATEWAY_URL": "",
    "RECONCILE_TENANT_ID": "",
}


def test_run_without_database_url_exits_2_naming_it_and_audits_nothing(tmp_path: Path) -> None:
    out = tmp_path / "reports"
    result = CliRunner().invoke(app, ["run", "--output-dir", str(out)], env=UNSET, catch_exceptions=False)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "DATABASE_URL: not set" in lines[0]
    assert "demo" in lines[0]  # it says how to get demo data on purpose
    assert not out.exists() or not any(out.iterdir())  # no run folder, no demo database


def test_run_refuses_the_demo_parameter(tmp_path: Path) -> None:
    env = {**UNSET, "DATABASE_URL": f"duckdb://{tmp_path / 'src.duckdb'}"}
    args = ["run", "--output-dir", str(tmp_path), "-p", "demo=true"]
    result = CliRunner().invoke(app, args, env=env, catch_exceptions=False)
    assert result.exit_code == 2
    assert "demo: set by the runner" in result.output and "reconcile-audit demo" in result.output


def test_summary_without_a_state_database_says_so(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["summary", "--json"], env=UNSET, catch_exceptions=False)
    assert result.exit_code == 2
    assert "RECONCILE_STATE_DATABASE_URL: not set" in result.output


def test_migrate_without_a_state_database_says_so() -> None:
    result = CliRunner().invoke(app, ["migrate"], env=UNSET, catch_exceptions=False)
    assert result.exit_code == 2
    assert "RECONCILE_STATE_DATABASE_URL: not set" in result.output


def test_a_crash_exits_2_with_one_line_never_1(tmp_path: Path) -> None:
    """An output folder that cannot be created: the console script says why in one line."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder", encoding="utf-8")
    script = Path(sys.executable).with_name("reconcile-audit")
    source = f"duckdb://{tmp_path / 'src.duckdb'}"
    with db.connect(source):  # an existing (empty) source: the crash is the output folder's
        pass
    env = {**os.environ, **UNSET, "DATABASE_URL": source}
    done = subprocess.run(
        [str(script), "run", "--output-dir", str(blocker / "reports")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Not a directory" in lines[0] and str(blocker) in lines[0], done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_unlock_breaks_a_stuck_lease_and_says_whose(tmp_path: Path) -> None:
    state = f"duckdb://{tmp_path / 'state.duckdb'}"
    env = {**UNSET, "RECONCILE_STATE_DATABASE_URL": state}
    with ExitStack() as stuck:
        stuck.enter_context(
            persist.run_lease(state, "acme", "host-b:4242:20261128T021500Z-abc", heartbeat=False)
        )
        first = CliRunner().invoke(app, ["unlock", "--tenant", "acme"], env=env, catch_exceptions=False)
        assert first.exit_code == 0
        assert (
            "released the lease of tenant 'acme', held by host-b:4242:20261128T021500Z-abc since"
            in first.output
        )
    again = CliRunner().invoke(app, ["unlock", "--tenant", "acme"], env=env, catch_exceptions=False)
    assert again.exit_code == 0 and "no lease held for tenant 'acme'" in again.output


def test_a_mistyped_duckdb_source_exits_2_and_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "typo" / "source.duckdb"
    out = tmp_path / "reports"
    env = {**UNSET, "DATABASE_URL": f"duckdb://{missing}"}
    result = CliRunner().invoke(app, ["run", "--output-dir", str(out)], env=env, catch_exceptions=False)
    assert result.exit_code == 2
    assert f"DATABASE_URL: no DuckDB database file at '{missing}'" in result.output
    assert not missing.parent.exists() and not out.exists()
