"""`reconcile-audit check`: every configured part tried for real, nothing sent, pushed or written;
and the CLI's conventions (papermill's `-p name value`, `--version`, environment in `--help`)."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from reconcile_audit import __version__
from reconcile_audit.compute import db
from reconcile_audit.emulator.server import Emulator
from reconcile_audit.face import demo
from reconcile_audit.face.cli import _parse_parameters, app
from tests.services import SMTP_USER, Inbox, free_port, running_smtp

SMTP_PASSWORD = "smtp-Check-Pw-91c2"
DB_PASSWORD = "pg-Check-Pw-3b7e"


@pytest.fixture(scope="module")
def smtp() -> Iterator[tuple[Inbox, int]]:
    with running_smtp(SMTP_PASSWORD, user=SMTP_USER) as server:
        yield server


def check(env: dict[str, str], *args: str) -> tuple[int, str]:
    """Exit code and what `check` printed: its own lines, without log lines other parts of the
    session (aiosmtpd's deprecation warning) write to the same captured stream."""
    result = CliRunner().invoke(app, ["check", *args], env=env, catch_exceptions=False)
    own = [line for line in result.output.splitlines() if not re.match(r"\d{4}-\d\d-\d\d \d\d:", line)]
    return result.exit_code, "\n".join(own) + "\n"


@pytest.fixture
def configured(
    source_url: str, dataset: demo.DemoData, emulator: Emulator, smtp: tuple[Inbox, int], pushgateway: str
) -> dict[str, str]:
    demo.write_source_database(source_url, dataset)
    url = source_url
    if url.startswith("postgresql://"):
        scheme, rest = url.split("://", 1)
        user, _, host = rest.partition("@")
        url = f"{scheme}://{user}:{DB_PASSWORD}@{host}"  # the test server trusts every password
    return {
        "DATABASE_URL": url,
        "RECONCILE_STATE_DATABASE_URL": "",
        "RECONCILE_TENANT_ID": "",
        "SOROBAN_RPC_URL": emulator.url,
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp[1]),
        "SMTP_USER": SMTP_USER,
        "SMTP_PASSWORD": SMTP_PASSWORD,
        "SMTP_STARTTLS": "false",
        "ALERT_EMAIL_TO": "Finance <finance@example.test>",
        "PUSHGATEWAY_URL": pushgateway,
    }


def _gateway_text(url: str) -> str:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        return response.read().decode()


@pytest.mark.slow
def test_every_part_answers_and_nothing_is_sent_pushed_or_written(
    configured: dict[str, str], smtp: tuple[Inbox, int], pushgateway: str
) -> None:
    before = len(smtp[0].envelopes)
    code, output = check(configured)
    assert code == 0, output
    lines = output.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["ok"] * 5, output
    assert "extract_invoices.sql binds; 64 invoice rows of all tenants" in lines[0]
    assert "will be applied by the first run" in lines[1]  # a fresh state database: not migrated yet
    assert "healthy, network 'Test SDF Network ; September 2015'" in lines[2]
    assert "nothing sent" in lines[3] and "nothing pushed" in lines[4]
    assert len(smtp[0].envelopes) == before
    assert "escrow_reconciliation_" not in _gateway_text(pushgateway)
    assert SMTP_PASSWORD not in output and DB_PASSWORD not in output
    with db.connect(configured["DATABASE_URL"]) as conn:  # check created none of the tool's tables
        assert (
            conn.rows("SELECT count(*) FROM information_schema.tables WHERE table_name LIKE 'reconcil%'")[0][
                0
            ]
            == 0
        )

    code, output = check(configured, "--json", "--tenant", "acme")
    data = json.loads(output)
    assert code == 0 and data["ok"] is True
    assert [c["name"] for c in data["checks"]] == [
        "source database",
        "state database",
        "stellar rpc",
        "smtp",
        "pushgateway",
    ]
    assert "of tenant 'acme'" in data["checks"][0]["detail"]


@pytest.mark.slow
def test_each_broken_part_is_named_in_one_line_and_exits_2(configured: dict[str, str]) -> None:
    broken = {
        **configured,
        "STELLAR_NETWORK_PASSPHRASE": "Public Global Stellar Network ; September 2015",
        "SMTP_PASSWORD": "wrong-" + SMTP_PASSWORD,
        "PUSHGATEWAY_URL": f"http://127.0.0.1:{free_port()}",
    }
    code, output = check(broken, "--json")
    assert code == 2
    data = json.loads(output[output.index("{") :])
    by_name = {c["name"]: c for c in data["checks"]}
    assert by_name["source database"]["status"] == "ok"
    assert (
        by_name["stellar rpc"]["status"] == "failed" and "wrong network" in by_name["stellar rpc"]["detail"]
    )
    assert by_name["smtp"]["status"] == "failed" and "Authentication" in by_name["smtp"]["detail"]
    assert (
        by_name["pushgateway"]["status"] == "failed"
        and "Connection refused" in by_name["pushgateway"]["detail"]
    )
    assert all("\n" not in c["detail"] for c in data["checks"])
    assert SMTP_PASSWORD not in output


@pytest.mark.slow
def test_a_total_column_of_the_wrong_type_fails_the_source_check(configured: dict[str, str]) -> None:
    with db.connect(configured["DATABASE_URL"]) as conn:
        conn.execute("ALTER TABLE escrow_summaries ALTER COLUMN total_funded TYPE TEXT")
        conn.commit()
    code, output = check(configured)
    assert code == 2
    source = output.splitlines()[0]
    assert source.startswith("failed  source database")
    assert "escrow_summaries.total_funded: the column's type is" in source and "expected numeric" in source


def test_a_missing_source_database_names_the_real_cause_first(pg_server: str) -> None:
    missing = pg_server.rsplit("/", 1)[0] + "/no_such_database_here"
    code, output = check(
        {"DATABASE_URL": missing, "SOROBAN_RPC_URL": "", "ALERT_EMAIL_TO": "", "PUSHGATEWAY_URL": ""}
    )
    assert code == 2
    first = output.splitlines()[0]
    assert first.startswith("failed  source database  cannot connect to the source database")
    assert first.endswith('database "no_such_database_here" does not exist')


def test_papermill_style_parameters_sit_beside_name_value() -> None:
    assert _parse_parameters(["tenant_id", "ttl_warning_ledgers=5"], ["acme"]) == {
        "tenant_id": "acme",
        "ttl_warning_ledgers": "5",
    }
    assert _parse_parameters(["a=1", "b", "c"], ["2", "x=y"]) == {"a": "1", "b": "2", "c": "x=y"}


def test_run_takes_p_name_value_on_the_command_line(tmp_path: Path) -> None:
    """`-p tenant_id acme` once failed with "Got unexpected extra argument(s)"."""
    source = tmp_path / "source.duckdb"
    url = demo.fresh_duckdb(source)
    demo.write_source_database(url, demo.build_dataset(50, history_nights=0))
    result = CliRunner().invoke(
        app,
        [
            "run",
            "-p",
            "tenant_id",
            "acme",
            "-p",
            "ttl_warning_ledgers",
            "17",
            "--prepare-only",
            "-o",
            str(tmp_path),
        ],
        env={"DATABASE_URL": url, "SOROBAN_RPC_URL": "http://127.0.0.1:1"},
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    prepared = next(tmp_path.glob("*/notebook.ipynb")).read_text()
    assert 'tenant_id = \\"acme\\"' in prepared and "ttl_warning_ledgers = 17" in prepared


def test_version_option_help_environment_and_completion() -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["--version"]).output.strip() == __version__
    top = runner.invoke(app, ["--help"]).output
    assert "--install-completion" in top and "check" in top
    for command, variable in (
        ("run", "RECONCILE_CURRENCY_TOKENS"),
        ("summary", "RECONCILE_STATE_DATABASE_URL"),
        ("check", "PUSHGATEWAY_URL"),
    ):
        help_text = " ".join(runner.invoke(app, [command, "--help"], terminal_width=200).output.split())
        assert "Environment:" in help_text and variable in help_text, command


def test_run_against_a_missing_database_says_the_real_cause_in_one_line(
    pg_server: str, tmp_path: Path
) -> None:
    """Once: three misleading lines first, then the cause, labelled `failed cell: runner`."""
    missing = pg_server.rsplit("/", 1)[0] + "/no_such_database_here"
    result = CliRunner().invoke(
        app,
        ["run", "-o", str(tmp_path), "--no-deliver"],
        env={
            "DATABASE_URL": missing,
            "SOROBAN_RPC_URL": "http://127.0.0.1:1",
            "RECONCILE_STATE_DATABASE_URL": "",
        },
        catch_exceptions=False,
    )
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[0] == (
        f'cannot connect to the state database {missing}: database "no_such_database_here" does not exist'
    )
    assert "failed cell" not in result.output and "ERROR" not in result.output
    summary = json.loads(next(tmp_path.glob("*/summary.json")).read_text())
    assert summary["status"] == "failed" and summary["failed_cell"] is None
    assert summary["failure_message"] == lines[0]
