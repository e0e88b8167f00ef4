"""`reconcile-audit run/summary/migrate` end to end: real papermill and kernel, real PostgreSQL,
real HTTP to the emulator. Runs are shared through module-scoped fixtures (each costs a kernel).

The database URLs carry a password (the test server trusts every login, so any password works)
and SMTP_PASSWORD is set, so every artifact can be searched for both.
"""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import nbformat
import polars as pl
import pytest
from typer.testing import CliRunner

from reconcile_audit.compute import persist
from reconcile_audit.compute.db import connect
from reconcile_audit.compute.schemas import CLASSES, FINDINGS
from reconcile_audit.emulator.server import Emulator
from reconcile_audit.face import demo
from reconcile_audit.face.cli import app
from tests.services import SMTP_USER, Inbox, admin_execute, running_smtp

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

# A distinct secret in every form a credential arrives in, so a leak names its source.
DB_PASSWORD = "pg-Pw-7f3a9c"  # userinfo of DATABASE_URL
DB_QUERY_PASSWORD = "pg-Query-Pw-58e1aa"  # libpq ?password= of the failing run's DATABASE_URL
SMTP_PASSWORD = "smtp-Pw-b41e2d"
RPC_PATH_KEY = "rpcPathKey0c9d2e71"  # https://rpc.provider/v1/<key>/, as providers issue keys
RPC_QUERY_KEY = "rpcQueryKey4ab37f"  # ?apikey=<key>
SECRETS = (DB_PASSWORD, DB_QUERY_PASSWORD, SMTP_PASSWORD, RPC_PATH_KEY, RPC_QUERY_KEY)
ARTIFACTS = (
    "notebook.ipynb",
    "report.html",
    "report.txt",
    "summary.json",
    "results.parquet",
    "findings.csv",
    "metrics.prom",
)


@pytest.fixture(scope="module")
def smtp() -> Iterator[tuple[Inbox, int]]:
    """A real SMTP server (aiosmtpd) that checks the password, as a local relay would."""
    with running_smtp(SMTP_PASSWORD, user=SMTP_USER) as server:
        yield server


def gateway_samples(url: str) -> dict[str, float]:
    """``name{labels}`` -> value of our samples on the gateway."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        text = response.read().decode()
    found = {}
    for line in text.splitlines():
        if line.startswith("escrow_reconciliation_"):
            name, _, value = line.rpartition(" ")
            found[name.replace(',instance=""', "").replace('instance="",', "")] = float(value)
    return found


def delivery(smtp: tuple[Inbox, int], pushgateway: str) -> dict[str, str]:
    return {
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp[1]),
        "SMTP_USER": SMTP_USER,
        "SMTP_STARTTLS": "false",
        "ALERT_EMAIL_TO": "ops@example.com",
        "PUSHGATEWAY_URL": pushgateway,
    }


@pytest.fixture(scope="module")
def databases(pg_server: str) -> Iterator[dict[str, str]]:
    """Three fresh databases: one with planted findings, one clean, one for the failing run."""
    base = pg_server.rsplit("/", 1)[0]
    names = {
        role: f"reconcile_cli_{role}_{uuid.uuid4().hex[:8]}" for role in ("findings", "clean", "failing")
    }
    for name in names.values():
        admin_execute(f'CREATE DATABASE "{name}"')
    try:
        yield {role: f"{base}/{name}" for role, name in names.items()}
    finally:
        for name in names.values():
            admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def with_password(url: str, *, in_query: bool = False) -> str:
    if in_query:
        return f"{url}?password={DB_QUERY_PASSWORD}"
    scheme, rest = url.split("://", 1)
    user, _, host = rest.partition("@")
    return f"{scheme}://{user}:{DB_PASSWORD}@{host}"


@pytest.fixture(scope="module")
def dataset() -> demo.DemoData:
    return demo.build_dataset(90, history_nights=0)


def clean_subset(data: demo.DemoData) -> demo.DemoData:
    """Only the plain invoices: every one a match, no flag."""
    planted = {invoice for ids in data.planted.values() for invoice in ids}
    invoices = data.invoices.filter(
        ~pl.col("invoice_id").is_in(list(planted)) & ~pl.col("invoice_id").str.starts_with("SKIP_")
    )
    keep = invoices.get_column("id")
    return demo.DemoData(
        invoices=invoices,
        summaries=data.summaries.filter(pl.col("invoice_id").is_in(keep.implode())),
        operations=data.operations.filter(pl.col("invoice_id").is_in(keep.implode())),
        escrows=data.escrows,
        tokens=data.tokens,
        escrow_addr_by_invoice='{"mappings": []}',
        currency_tokens=data.currency_tokens,
        planted={},
        earlier_funding={},
    )


@pytest.fixture(scope="module")
def loaded(databases: dict[str, str], dataset: demo.DemoData) -> dict[str, str]:
    demo.write_source_database(databases["findings"], dataset)
    clean = clean_subset(dataset)
    demo.write_source_database(databases["clean"], clean)
    demo.write_source_database(databases["failing"], clean)
    return databases


def environment(
    url: str, emulator: Emulator, dataset: demo.DemoData, *, password_in_query: bool = False
) -> dict[str, str]:
    return {
        "DATABASE_URL": with_password(url, in_query=password_in_query),
        "SOROBAN_RPC_URL": f"{emulator.url}/v1/{RPC_PATH_KEY}/?apikey={RPC_QUERY_KEY}",
        "ESCROW_ADDR_BY_INVOICE": dataset.escrow_addr_by_invoice,
        "SMTP_PASSWORD": SMTP_PASSWORD,
        "SMTP_HOST": "",
        "RECONCILE_STATE_DATABASE_URL": "",
        "RECONCILE_TENANT_ID": "",
        "ALERT_EMAIL_TO": "",
        "PUSHGATEWAY_URL": "",
    }


class Run:
    def __init__(self, result, out: Path) -> None:
        self.result = result
        self.out = out
        folders = [p for p in out.iterdir() if p.is_dir()]
        self.folder = folders[0] if len(folders) == 1 else None

    @property
    def summary(self) -> dict:
        assert self.folder is not None
        return json.loads((self.folder / "summary.json").read_text(encoding="utf-8"))

    def text(self, name: str) -> str:
        assert self.folder is not None
        return (self.folder / name).read_text(encoding="utf-8")


def invoke(args: list[str], env: dict[str, str]):
    return CliRunner().invoke(app, args, env=env, catch_exceptions=False)


def run_cli(tmp_path_factory, name: str, args: list[str], env: dict[str, str]) -> Run:
    out = tmp_path_factory.mktemp(name)
    return Run(invoke(["run", "--output-dir", str(out), *args], env), out)


@pytest.fixture(scope="module")
def findings_run(tmp_path_factory, loaded, emulator, dataset, smtp, pushgateway) -> Run:
    env = environment(loaded["findings"], emulator, dataset) | delivery(smtp, pushgateway)
    return run_cli(tmp_path_factory, "findings", ["--run-key", "test:findings"], env)


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory, loaded, emulator, dataset) -> Run:
    env = environment(loaded["clean"], emulator, dataset)
    return run_cli(tmp_path_factory, "clean", ["-p", "ttl_warning_ledgers=1000"], env)


@pytest.fixture(scope="module")
def failing_run(tmp_path_factory, loaded, emulator, dataset, smtp, pushgateway) -> Run:
    broken = tmp_path_factory.mktemp("sql") / "broken_extract.sql"
    broken.write_text("SELECT id AS invoice_pk FROM invoices WHERE tenant_id = $1 AND (", encoding="utf-8")
    env = environment(loaded["failing"], emulator, dataset, password_in_query=True) | delivery(
        smtp, pushgateway
    )
    return run_cli(tmp_path_factory, "failing", ["-p", f"extract_sql_path={broken}"], env)


# --- the run with findings -----------------------------------------------------------------------


def test_findings_run_exits_1_with_every_artifact(findings_run, dataset):
    assert findings_run.result.exit_code == 1, findings_run.result.output
    assert findings_run.folder is not None
    for name in ARTIFACTS:
        assert (findings_run.folder / name).is_file(), name
    assert str(findings_run.folder / "report.html") in findings_run.result.output
    assert not (findings_run.folder / ".spool").exists()  # classify's plain matches: in results.parquet now


def test_summary_json_counts_every_class(findings_run, dataset):
    summary = findings_run.summary
    reconcilable = dataset.invoices.filter(~pl.col("invoice_id").str.starts_with("SKIP_")).height
    assert summary["status"] == "findings"
    assert summary["run_id"] == findings_run.folder.name
    assert summary["total"] == reconcilable == sum(summary["counts"].values())
    assert set(summary["counts"]) == set(CLASSES)
    assert all(summary["counts"][name] > 0 for name in CLASSES), summary["counts"]


def test_results_hold_one_row_per_invoice_with_the_documented_columns(findings_run):
    results = pl.read_parquet(findings_run.folder / "results.parquet")
    assert results.height == findings_run.summary["total"]
    assert results.get_column("class").value_counts().rows_by_key("class", unique=True) == {
        name: (count,) for name, count in findings_run.summary["counts"].items() if count
    }
    assert set(FINDINGS) <= set(results.columns)
    findings_csv = pl.read_csv(findings_run.folder / "findings.csv", infer_schema=False)
    assert findings_csv.height == results.filter(pl.col("class") != "match").height > 0  # the findings only


def test_report_says_findings_and_keeps_hostile_ids_as_text(findings_run, dataset):
    html = findings_run.text("report.html")
    assert "FINDINGS" in html
    assert "<script" not in html.lower()
    assert '<img src=x onerror="alert' not in html
    assert "&lt;img src=x onerror=" in html
    assert "FINDINGS" in findings_run.text("report.txt")


def test_executed_notebook_keeps_parameters_and_the_ledger_read_ran_in_the_kernel(findings_run):
    notebook = nbformat.read(findings_run.folder / "notebook.ipynb", as_version=4)
    injected = [c for c in notebook.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1
    assert f'run_id = "{findings_run.folder.name}"' in injected[0].source
    ledger_cell = next(c for c in notebook.cells if "#papermill_description=ledger" in c.source)
    printed = "".join(o.get("text", "") for o in ledger_cell.outputs if o.output_type == "stream")
    # The reader ran inside the kernel's event loop and read every escrow over HTTP.
    assert "ledger:" in printed and "requests" in printed
    assert not any(o.output_type == "error" for c in notebook.cells for o in c.get("outputs", []))


def test_the_kernel_is_shut_down_after_the_run(findings_run):
    import psutil

    kernels = [
        child
        for child in psutil.Process().children(recursive=True)
        if any("ipykernel" in part for part in child.cmdline())
    ]
    assert kernels == []


def test_no_secret_in_any_artifact_output_email_or_table(findings_run, failing_run, smtp, loaded):
    for run in (findings_run, failing_run):
        assert run.folder is not None
        for path in run.out.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                for secret in SECRETS:
                    assert secret.encode() not in data, f"{secret} leaked into {path.name}"
        for secret in SECRETS:
            assert secret not in run.result.output
    inbox, _ = smtp
    assert inbox.envelopes
    for envelope in inbox.envelopes:
        raw = envelope.original_content or envelope.content
        for secret in SECRETS:
            assert secret.encode() not in raw, f"{secret} leaked into an email"
    tables = (
        "reconciliation_runs",
        "reconciliation_attempts",
        "reconciliation_findings",
        "reconciliation_leases",
    )
    for url in (loaded["findings"], loaded["failing"]):
        with connect(url) as conn:
            stored = repr([conn.rows(f"SELECT * FROM {table}") for table in tables])
        for secret in SECRETS:
            assert secret not in stored, f"{secret} leaked into the state database"


def test_findings_run_emails_the_report_and_pushes_metrics(findings_run, smtp, pushgateway):
    inbox, _ = smtp
    received = [m for m in inbox.messages if m["X-Reconcile-Run-Id"] == findings_run.folder.name]
    assert len(received) == 1
    message = received[0]
    assert "FINDINGS" in message["Subject"]
    body = message.get_body(("html",))
    assert body is not None and "FINDINGS" in body.get_content()
    assert message.get_body(("plain",)) is not None
    attachments = [part.get_filename() for part in message.iter_attachments()]
    assert attachments == ["findings.csv"]  # the findings only, never every invoice
    delivered = findings_run.summary["delivery"]
    assert any(note.startswith("email sent") for note in delivered), delivered
    assert any(note.startswith("metrics push pushed") for note in delivered), delivered
    pushed = gateway_samples(pushgateway)
    assert (
        pushed['escrow_reconciliation_invoices{class="mismatch",job="escrow_reconciliation",tenant="all"}']
        > 0
    )
    assert "escrow_reconciliation_last_success_timestamp_seconds" in "".join(pushed)
    assert (findings_run.folder / "metrics.prom").read_text(encoding="utf-8").count(
        "escrow_reconciliation_"
    ) > 5


def test_summary_command_reads_the_health(findings_run, loaded, emulator, dataset):
    env = environment(loaded["findings"], emulator, dataset)
    result = invoke(["summary", "--json"], env)
    assert result.exit_code == 1, result.output  # the exit code follows the health: findings
    health = json.loads(result.output)
    assert health["status"] == "findings"
    assert health["run_key"] == "test:findings"
    assert health["latest"]["status"] == "completed" and health["latest"]["run_key"] == "test:findings"
    assert health["last_completed"]["total"] == health["latest"]["total"] > 0
    assert health["last_completed"]["counts"]["mismatch"] > 0
    assert DB_PASSWORD not in result.output
    plain = invoke(["summary"], env)
    assert plain.exit_code == 1 and "status: findings" in plain.output


# --- clean, failing, lease, prepare-only, parameters --------------------------------------------


def test_clean_run_exits_0(clean_run):
    assert clean_run.result.exit_code == 0, clean_run.result.output
    summary = clean_run.summary
    assert summary["status"] == "clean"
    assert summary["counts"]["match"] == summary["total"] > 0
    assert "CLEAN" in clean_run.text("report.html")


def test_failing_cell_exits_2_names_the_cell_and_records_the_failure(failing_run, loaded):
    result = failing_run.result
    assert result.exit_code == 2, result.output
    assert "extract" in result.output
    summary = failing_run.summary
    assert summary["status"] == "failed"
    assert summary["failed_cell"] == "extract"
    notebook = failing_run.text("notebook.ipynb")
    assert "papermill-error-cell" in notebook  # papermill's banner stays in the executed notebook
    assert "FAILED" in failing_run.text("report.html")
    metrics = failing_run.text("metrics.prom")
    assert 'escrow_reconciliation_last_run_success{tenant="all"} 0.0' in metrics
    assert "escrow_reconciliation_last_success_timestamp_seconds" not in metrics
    health = persist.latest_summary(loaded["failing"])
    assert health.status == "failed"
    assert any(note.startswith("metrics push pushed") for note in summary["delivery"]), summary["delivery"]
    for secret in SECRETS:
        assert secret not in notebook and secret not in result.output


def test_lease_held_exits_3_and_names_the_holder(tmp_path, loaded, emulator, dataset):
    env = environment(loaded["clean"], emulator, dataset)
    with persist.run_lease(loaded["clean"], None, "nightly on host-a"):
        result = invoke(["run", "--output-dir", str(tmp_path)], env)
    assert result.exit_code == 3, result.output
    assert "nightly on host-a" in result.output
    assert list(tmp_path.iterdir()) == []


def test_prepare_only_writes_the_parameterised_notebook(tmp_path, loaded, emulator, dataset):
    env = environment(loaded["clean"], emulator, dataset)
    result = invoke(["run", "--prepare-only", "--output-dir", str(tmp_path), "--tenant", "acme"], env)
    assert result.exit_code == 0, result.output
    (folder,) = list(tmp_path.iterdir())
    assert [p.name for p in folder.iterdir()] == ["notebook.ipynb"]
    notebook = nbformat.read(folder / "notebook.ipynb", as_version=4)
    injected = next(c for c in notebook.cells if "injected-parameters" in c.metadata.get("tags", []))
    assert 'tenant_id = "acme"' in injected.source
    assert all(c.get("outputs", []) == [] for c in notebook.cells if c.cell_type == "code")
    assert DB_PASSWORD not in (folder / "notebook.ipynb").read_text(encoding="utf-8")


def test_unknown_parameter_exits_2_listing_the_known_ones(tmp_path):
    result = invoke(["run", "--output-dir", str(tmp_path), "-p", "bogus=1"], {})
    assert result.exit_code == 2
    assert "bogus" in result.output and "tenant_id" in result.output
    assert list(tmp_path.iterdir()) == []


def test_password_parameter_exits_2_without_echoing_it(tmp_path):
    url = f"postgresql://postgres:{DB_PASSWORD}@127.0.0.1/x"
    result = invoke(["run", "--output-dir", str(tmp_path), "-p", f"database_url={url}"], {})
    assert result.exit_code == 2
    assert "DATABASE_URL" in result.output and DB_PASSWORD not in result.output


def test_migrate_is_idempotent_and_redacts(loaded):
    env = {"DATABASE_URL": with_password(loaded["clean"]), "RECONCILE_STATE_DATABASE_URL": ""}
    for _ in range(2):
        result = invoke(["migrate"], env)
        assert result.exit_code == 0, result.output
        assert "migrated" in result.output and DB_PASSWORD not in result.output


def test_summary_before_any_run_is_not_run(tmp_path):
    env = {"DATABASE_URL": f"duckdb://{tmp_path / 'never.duckdb'}", "RECONCILE_STATE_DATABASE_URL": ""}
    result = invoke(["summary", "--json"], env)
    assert result.exit_code == 2, result.output  # not run is not healthy
    assert json.loads(result.output)["status"] == "not_run"
    assert json.loads(result.output)["latest"] is None
    assert not (tmp_path / "never.duckdb").exists()


def test_a_night_whose_findings_are_all_acknowledged_exits_0_and_is_healthy(
    findings_run, tmp_path_factory, loaded, emulator, dataset
):
    """The operator's path: last night's findings are owned, each acknowledged with a reason;
    tonight's run finds the same money and exits 0, healthy, with the findings still counted."""
    env = environment(loaded["findings"], emulator, dataset)
    first = pl.read_parquet(findings_run.folder / "results.parquet").filter(pl.col("class") != "match")
    ids = first.get_column("finding_id").drop_nulls().unique().sort().to_list()
    assert len(ids) == first.height  # every finding of the demo can be acknowledged
    for finding_id in ids:
        acked = invoke(["ack", finding_id, "--reason", "owned by finance, ticket FIN-9", "--by", "ops"], env)
        assert acked.exit_code == 0, acked.output
    tonight = run_cli(tmp_path_factory, "acknowledged", ["--run-key", "test:acknowledged"], env)
    assert tonight.result.exit_code == 0, tonight.result.output
    summary = tonight.summary
    assert summary["status"] == "findings"  # the money still differs, and the report says so
    assert (summary["acknowledged"], summary["unacknowledged"]) == (first.height, 0)
    assert "need a person, " in tonight.result.output and "0 need a person" in tonight.result.output
    health = invoke(["summary", "--json"], env)
    assert health.exit_code == 0 and json.loads(health.output)["status"] == "healthy"
    assert "Acknowledged by ops" in tonight.text("report.html")
