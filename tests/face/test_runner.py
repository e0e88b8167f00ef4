"""Runner pieces that need no notebook execution: parameters, kernel, failing cell, scrubbing."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from nbformat.v4 import new_code_cell, new_notebook, new_output

from reconcile_audit.compute.db import connect
from reconcile_audit.errors import ConfigError
from reconcile_audit.face import runner
from reconcile_audit.face.run import default_run_key, new_run_id
from reconcile_audit.output import notebook_views


@pytest.fixture(scope="module")
def known():
    return runner.notebook_parameters()


def test_unknown_parameter_is_rejected_with_the_known_names(known):
    with pytest.raises(ConfigError) as caught:
        runner.check_parameters({"tenant": "acme", "bogus": 1}, known)
    assert caught.value.setting == "bogus, tenant"
    assert "tenant_id" in caught.value.problem and "demo_invoices" in caught.value.problem


def test_values_take_the_notebook_default_type(known):
    checked = runner.check_parameters(
        {"demo_invoices": "120", "deliver": "false", "progress": "yes", "tenant_id": "42"}, known
    )
    assert checked == {"demo_invoices": 120, "deliver": False, "progress": True, "tenant_id": "42"}
    with pytest.raises(ConfigError, match="demo_invoices"):
        runner.check_parameters({"demo_invoices": "many"}, known)
    with pytest.raises(ConfigError, match="deliver"):
        runner.check_parameters({"deliver": "perhaps"}, known)


def test_password_in_a_url_parameter_is_refused(known):
    with pytest.raises(ConfigError) as caught:
        runner.check_parameters({"database_url": "postgresql://app:hunter2@db/x"}, known)
    assert "DATABASE_URL" in caught.value.problem
    assert "hunter2" not in str(caught.value)
    # libpq's query form is a password too.
    with pytest.raises(ConfigError, match="environment") as caught:
        runner.check_parameters(
            {"database_url": "postgresql://app@db/x?sslmode=require&password=qp-77"}, known
        )
    assert "qp-77" not in str(caught.value)
    # Without a password the URL is an ordinary parameter.
    assert runner.check_parameters({"database_url": "postgresql://app@db/x"}, known)


def test_output_dir_belongs_to_the_runner(known):
    with pytest.raises(ConfigError, match="output-dir"):
        runner.check_parameters({"output_dir": "/tmp/x"}, known)


def test_kernel_is_registered_for_this_interpreter():
    name = runner.ensure_kernel()
    spec = KernelSpecManager().get_kernel_spec(name)
    assert Path(spec.argv[0]).resolve() == Path(sys.executable).resolve()
    assert Path(spec.resource_dir).resolve().is_relative_to(Path(sys.prefix).resolve())
    assert runner.ensure_kernel() == name  # idempotent


def _executed(tmp_path: Path, cells: list) -> Path:
    path = tmp_path / "executed.ipynb"
    nbformat.write(new_notebook(cells=cells), path)
    return path


def test_failing_cell_is_named_by_its_description(tmp_path):
    ok = new_code_cell("#papermill_description=extract\nx = 1")
    bad = new_code_cell("#papermill_description=ledger\nraise RpcPreflightError('down')")
    bad.outputs = [new_output("error", ename="RpcPreflightError", evalue="down", traceback=[])]
    name, detail = runner.failing_cell(_executed(tmp_path, [ok, bad]))
    assert (name, detail) == ("ledger", "RpcPreflightError: down")


def test_failing_cell_without_description_is_named_by_position(tmp_path):
    bad = new_code_cell("1/0")
    bad.outputs = [new_output("error", ename="ZeroDivisionError", evalue="division by zero", traceback=[])]
    assert runner.failing_cell(_executed(tmp_path, [new_code_cell("x = 1"), bad]))[0] == "cell 1"


def test_scrub_replaces_secrets_in_text_artifacts_only(tmp_path):
    (tmp_path / "report.html").write_text("dsn postgresql://u:pw-123@h/db", encoding="utf-8")
    (tmp_path / "summary.json").write_text(json.dumps({"ok": True}), encoding="utf-8")
    (tmp_path / "blob.bin").write_bytes(b"\xff\xfepw-123")
    changed = runner.scrub_secrets(tmp_path, ("pw-123",))
    assert changed == [tmp_path / "report.html"]
    assert (tmp_path / "report.html").read_text(encoding="utf-8") == "dsn postgresql://u:***@h/db"


def test_environment_is_restored_after_the_run(monkeypatch):
    monkeypatch.setenv("RECONCILE_TEST_KEEP", "before")
    monkeypatch.delenv("RECONCILE_TEST_NEW", raising=False)
    with runner.environment({"RECONCILE_TEST_KEEP": "during", "RECONCILE_TEST_NEW": "x"}):
        assert os.environ["RECONCILE_TEST_KEEP"] == "during"
    assert os.environ["RECONCILE_TEST_KEEP"] == "before"
    assert "RECONCILE_TEST_NEW" not in os.environ


def test_run_ids_sort_by_time_and_keys_are_per_day():
    from datetime import UTC, datetime

    early = new_run_id(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    late = new_run_id(datetime(2026, 1, 2, 3, 4, 6, tzinfo=UTC))
    assert early.startswith("20260102T030405Z-") and early < late
    assert default_run_key("acme", datetime(2026, 1, 2, 23, 0, tzinfo=UTC)) == "acme:2026-01-02"
    assert default_run_key(None, datetime(2026, 1, 2, tzinfo=UTC)) == "all:2026-01-02"


def _tiny_notebook(path: Path, body: str) -> Path:
    parameters = new_code_cell(
        'output_dir: str = ""  # where\nrun_key: str = ""  # key\nrun_id: str = ""  # id',
        metadata={"tags": ["parameters"]},
    )
    notebook = new_notebook(
        cells=[parameters, new_code_cell(body)],
        metadata={
            "kernelspec": {"name": "python3", "language": "python", "display_name": "Python 3"},
            "language_info": {"name": "python"},
        },
    )
    nbformat.write(notebook, path)
    return path


@pytest.mark.slow
def test_a_cell_past_the_timeout_fails_the_run_naming_it(tmp_path, monkeypatch):
    source = f"duckdb://{tmp_path / 'source.duckdb'}"
    with connect(source):  # the tiny notebook reads nothing, but a run needs a source that exists
        pass
    monkeypatch.setenv("DATABASE_URL", source)
    monkeypatch.setenv("RECONCILE_STATE_DATABASE_URL", f"duckdb://{tmp_path / 'state.duckdb'}")
    for name in ("ALERT_EMAIL_TO", "PUSHGATEWAY_URL", "RECONCILE_TENANT_ID"):
        monkeypatch.delenv(name, raising=False)
    notebook = _tiny_notebook(
        tmp_path / "slow.ipynb", "#papermill_description=ledger\nimport time\ntime.sleep(60)"
    )
    request = runner.RunRequest(
        output_dir=tmp_path / "out", notebook=notebook, cell_timeout_seconds=2, deliver=False
    )
    outcome = runner.run(request)
    assert outcome.exit_code == 2 and outcome.failed_cell == "ledger", outcome.message
    summary = json.loads((outcome.run_dir / "summary.json").read_text(encoding="utf-8"))
    assert summary["status"] == "failed" and summary["failed_cell"] == "ledger"


def test_settings_table_redacts_and_cuts_long_values():
    from reconcile_audit.compute.settings import load_settings

    settings = load_settings(
        {"escrow_addr_by_invoice": '{"mappings": [' + "{}," * 400 + "{}]}"},
        {
            "DATABASE_URL": "postgresql://app:pw-9x@db/x",
            "SMTP_PASSWORD": "smtp-9x",
            "SOROBAN_RPC_URL": "https://rpc.provider:8443/v1/key-in-path-9x/?apikey=key-in-query-9x",
        },
    )
    table = dict(notebook_views.settings_table(settings).iter_rows())
    assert table["database_url"] == "postgresql://app:***@db/x"
    assert table["smtp_password"] == "***"
    assert (
        table["escrow_addr_by_invoice"].endswith("characters)") and len(table["escrow_addr_by_invoice"]) < 140
    )
    assert table["rpc_url"] == "https://rpc.provider:8443"  # scheme://host[:port], nothing more
    assert "pw-9x" not in str(table) and "smtp-9x" not in str(table) and "-9x" not in table["rpc_url"]


def test_the_log_follower_repeats_warnings_and_marked_records_and_tracks_the_stage(tmp_path, caplog):
    events = tmp_path / "run.jsonl"
    follower = runner.KernelLogFollower(events)
    lines = [
        {
            "time": "2026-11-29T02:00:00+00:00",
            "level": "INFO",
            "logger": "reconcile_audit.face.run",
            "message": "stage ledger started",
            "stage": "ledger",
        },
        {
            "time": "2026-11-29T02:00:01+00:00",
            "level": "INFO",
            "logger": "reconcile_audit.x",
            "message": "quiet",
        },
        {
            "time": "2026-11-29T02:00:02+00:00",
            "level": "WARNING",
            "logger": "reconcile_audit.findings",
            "message": "escrow reconciliation mismatch: A",
        },
        {
            "time": "2026-11-29T02:00:03+00:00",
            "level": "INFO",
            "logger": "reconcile_audit.face.run",
            "message": "stage timings: ledger 1.0 s",
            "console": True,
        },
    ]
    with caplog.at_level(logging.DEBUG):
        events.write_text(
            "\n" + "\n".join(json.dumps(line) for line in lines) + '\n{"half a line', encoding="utf-8"
        )
        follower.start()
        follower.stop()
    repeated = [r.getMessage() for r in caplog.records if r.name.startswith("reconcile_audit.")]
    assert repeated == ["escrow reconciliation mismatch: A", "stage timings: ledger 1.0 s"]
    assert follower.stage == "ledger"


def test_scrub_streams_and_finds_a_secret_across_chunks(tmp_path, monkeypatch):
    """A 300 MB results file is never read whole: chunks of a few characters here, with the
    secret cut across every boundary once, and a file without it left untouched."""
    monkeypatch.setattr(runner, "_SCRUB_CHUNK", 7)
    text = "".join(f"row {n}: postgresql://u:pw-123456@h/db\n" for n in range(40))
    (tmp_path / "findings.csv").write_text(text, encoding="utf-8")
    (tmp_path / "clean.csv").write_text("nothing to hide\n" * 50, encoding="utf-8")
    before = (tmp_path / "clean.csv").stat().st_mtime_ns
    assert runner.scrub_secrets(tmp_path, ("pw-123456", "")) == [tmp_path / "findings.csv"]
    assert (tmp_path / "findings.csv").read_text(encoding="utf-8") == text.replace("pw-123456", "***")
    assert (tmp_path / "clean.csv").stat().st_mtime_ns == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean.csv", "findings.csv"]  # no scratch left


def _run_folder(root: Path, name: str, status: str | None) -> Path:
    """A run folder with the summary.json the run writes (none while it is still being written)."""
    from reconcile_audit.compute.schemas import ClassCounts
    from reconcile_audit.output.summary import RunSummary
    from tests.factories import facts

    folder = root / name
    folder.mkdir()
    if status is not None:
        summary = RunSummary.from_run(facts(status, run_id=name), ClassCounts.zero())
        (folder / "summary.json").write_text(summary.to_json(), encoding="utf-8")
    return folder


def test_old_run_folders_are_pruned_but_never_the_latest_completed_one(tmp_path):
    good = _run_folder(tmp_path, "20261101T020000Z-aaaaaa", "findings")
    for day in range(2, 9):  # a week of failures after the last good night
        _run_folder(tmp_path, f"202611{day:02d}T020000Z-bbbbbb", "failed")
    current = _run_folder(tmp_path, "20261109T020000Z-cccccc", None)  # still being written
    (tmp_path / "demo").mkdir()  # not a run folder: never touched
    (tmp_path / "notes.txt").write_text("mine", encoding="utf-8")
    removed = runner.prune_run_folders(tmp_path, keep=3, current=current.name)
    assert [p.name for p in removed] == [f"202611{day:02d}T020000Z-bbbbbb" for day in range(2, 7)]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == [
        good.name,
        "20261107T020000Z-bbbbbb",
        "20261108T020000Z-bbbbbb",
        current.name,
        "demo",
        "notes.txt",
    ]
    # Nothing beyond the limit: nothing deleted.
    assert runner.prune_run_folders(tmp_path, keep=30, current=current.name) == []


def test_keep_runs_is_validated():
    from reconcile_audit.compute.settings import load_settings

    assert load_settings({}, {"RECONCILE_KEEP_RUNS": "5"}).keep_runs == 5
    with pytest.raises(ConfigError, match="RECONCILE_KEEP_RUNS"):
        load_settings({}, {"RECONCILE_KEEP_RUNS": "0"})


def test_the_kernel_hands_memory_back_unless_the_operator_chose_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from reconcile_audit.face.runner import KERNEL_ALLOCATOR, kernel_allocator

    # What polars writes when imported without a value of the operator's.
    monkeypatch.setenv("_RJEM_MALLOC_CONF", "dirty_decay_ms:500,muzzy_decay_ms:1000")
    assert kernel_allocator() == {
        "_RJEM_MALLOC_CONF": f"dirty_decay_ms:500,muzzy_decay_ms:1000,{KERNEL_ALLOCATOR}"
    }
    # Written twice: a parent process (a scheduler in Python, a benchmark) imported polars too.
    twice = "dirty_decay_ms:500,muzzy_decay_ms:1000,dirty_decay_ms:500,muzzy_decay_ms:1000"
    monkeypatch.setenv("_RJEM_MALLOC_CONF", twice)
    assert kernel_allocator() == {"_RJEM_MALLOC_CONF": f"{twice},{KERNEL_ALLOCATOR}"}
    monkeypatch.setenv("_RJEM_MALLOC_CONF", "dirty_decay_ms:500,muzzy_decay_ms:1000,narenas:2")
    assert kernel_allocator() == {}
    monkeypatch.delenv("_RJEM_MALLOC_CONF")
    assert kernel_allocator() == {"_RJEM_MALLOC_CONF": KERNEL_ALLOCATOR}
