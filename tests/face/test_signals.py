"""A run stopped from outside: SIGTERM (systemd, Kubernetes) and SIGKILL, with a real runner
process, kernel, PostgreSQL and emulator. The next run must never be locked out (exit 3)."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from reconcile_audit.compute.db import connect
from reconcile_audit.emulator.faults import FaultPlan
from reconcile_audit.emulator.server import Emulator
from reconcile_audit.face import demo
from tests.services import admin_execute

SCRIPT = Path(sys.executable).with_name("reconcile-audit")
RUN_KEY = "acme:signals"


@pytest.fixture
def source(pg_url: str, dataset: demo.DemoData) -> str:
    demo.write_source_database(pg_url, dataset)
    return pg_url


@pytest.fixture
def slow_rpc(dataset: demo.DemoData) -> Iterator[Emulator]:
    """Every getLedgerEntries waits 20 s: the run is certainly inside the ledger cell when stopped."""
    with Emulator(dataset.ledger_state(0), FaultPlan(rate=1.0, kinds=("delay",), delay_seconds=20)) as emu:
        yield emu


def start(
    source: str,
    rpc_url: str,
    dataset: demo.DemoData,
    out: Path,
    *extra: str,
    env: dict[str, str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> subprocess.Popen[str]:
    """`reconcile-audit run` as its own process, configured by the environment alone."""
    environment = {
        **{
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("RECONCILE_", "SMTP_", "ALERT_", "PUSHGATEWAY"))
        },
        "DATABASE_URL": source,
        "SOROBAN_RPC_URL": rpc_url,
        "ESCROW_ADDR_BY_INVOICE": dataset.escrow_addr_by_invoice,
        **(env or {}),
    }
    key = ["--run-key", RUN_KEY] if "--tenant" not in extra else []
    args = [str(SCRIPT), "run", *key, "--output-dir", str(out), "--no-deliver", *extra]
    return subprocess.Popen(
        args,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=preexec_fn,
    )


def rows(url: str, sql: str) -> list[tuple]:
    with connect(url) as conn:
        return conn.rows(sql)


def wait_until_running(url: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        try:
            if rows(url, "SELECT count(*) FROM reconciliation_attempts WHERE status = 'running'")[0][0]:
                time.sleep(2)  # into the ledger cell, whose RPC call takes 20 s
                return
        except Exception:
            pass
        time.sleep(0.2)
    raise AssertionError("the run never started")


def test_sigterm_records_the_run_failed_releases_the_lease_and_exits_2(
    source: str, slow_rpc: Emulator, dataset: demo.DemoData, tmp_path: Path
) -> None:
    process = start(source, slow_rpc.url, dataset, tmp_path / "stopped")
    wait_until_running(source, process)
    stopped_at = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 2, stderr
    assert time.monotonic() - stopped_at < 30
    assert "SIGTERM" in stderr and "Traceback" not in stderr
    ((status, error),) = rows(source, "SELECT status, error_message FROM reconciliation_attempts")
    assert status == "failed" and "stopped by SIGTERM" in error
    assert rows(source, "SELECT count(*) FROM reconciliation_leases") == [(0,)]
    (folder,) = (tmp_path / "stopped").iterdir()
    assert '"status": "failed"' in (folder / "summary.json").read_text(encoding="utf-8")
    assert 'escrow_reconciliation_last_run_success{tenant="all"} 0.0' in (folder / "metrics.prom").read_text(
        encoding="utf-8"
    )


def test_after_sigkill_the_next_run_takes_over_and_closes_the_dead_attempt(
    source: str, slow_rpc: Emulator, dataset: demo.DemoData, tmp_path: Path
) -> None:
    process = start(source, slow_rpc.url, dataset, tmp_path / "killed")
    wait_until_running(source, process)
    process.kill()
    process.communicate(timeout=30)
    assert rows(source, "SELECT count(*) FROM reconciliation_leases") == [(1,)]  # nobody released it

    with Emulator(dataset.ledger_state(0)) as healthy:
        rerun = start(source, healthy.url, dataset, tmp_path / "rerun")
        _, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 1, stderr  # not 3: the dead holder's lease was taken over
    statuses = [
        status for (status,) in rows(source, "SELECT status FROM reconciliation_attempts ORDER BY id")
    ]
    assert statuses == ["abandoned", "completed"]


def test_the_console_carries_the_kernel_s_warnings_and_timings_as_json_and_no_jupyter_chatter(
    source: str, dataset: demo.DemoData, tmp_path: Path
) -> None:
    with Emulator(dataset.ledger_state(0)) as healthy:
        process = start(source, healthy.url, dataset, tmp_path / "out", "--log-format", "json")
        stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 1, stderr
    events = [json.loads(line) for line in stderr.splitlines()]  # every console line is JSON
    mismatches = [e for e in events if e["logger"] == "reconcile_audit.findings"]
    assert mismatches and all(e["level"] == "WARNING" for e in mismatches)
    assert any(e["message"].startswith("stage timings: extract") for e in events)
    assert "IPKernelApp" not in stderr + stdout
    assert "FINDINGS:" in stdout


def test_a_cell_timeout_is_recorded_failed_naming_the_cell(
    source: str, slow_rpc: Emulator, dataset: demo.DemoData, tmp_path: Path
) -> None:
    process = start(source, slow_rpc.url, dataset, tmp_path / "timeout", "--cell-timeout", "3")
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2, stderr
    assert "failed cell: ledger" in stderr
    ((status, error),) = rows(source, "SELECT status, error_message FROM reconciliation_attempts")
    assert status == "failed" and "cell 'ledger' failed" in error


def test_a_dead_kernel_is_recorded_failed_naming_the_cell(
    source: str, slow_rpc: Emulator, dataset: demo.DemoData, tmp_path: Path
) -> None:
    process = start(source, slow_rpc.url, dataset, tmp_path / "dead-kernel")
    wait_until_running(source, process)
    kernels = [
        p
        for p in psutil.Process(process.pid).children(recursive=True)
        if "ipykernel" in " ".join(p.cmdline())
    ]
    assert len(kernels) == 1
    kernels[0].kill()
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2, stderr
    assert "failed cell: ledger" in stderr
    ((status, error),) = rows(source, "SELECT status, error_message FROM reconciliation_attempts")
    assert status == "failed" and "cell 'ledger' failed" in error
    assert rows(source, "SELECT count(*) FROM reconciliation_leases") == [(0,)]


@pytest.fixture
def slowish_rpc(dataset: demo.DemoData) -> Iterator[Emulator]:
    """Every getLedgerEntries waits 5 s: long enough to take the database away meanwhile, short
    enough for a run that reads the ledger in three rounds, and again for its in-flight escrows."""
    with Emulator(dataset.ledger_state(0), FaultPlan(rate=1.0, kinds=("delay",), delay_seconds=5)) as emu:
        yield emu


def test_a_state_database_gone_at_persist_time_exits_2_and_says_the_run_was_not_stored(
    source: str, slowish_rpc: Emulator, dataset: demo.DemoData, tmp_path: Path
) -> None:
    name = source.rsplit("/", 1)[1]
    process = start(source, slowish_rpc.url, dataset, tmp_path / "unstored")
    wait_until_running(source, process)
    # The database disappears while the kernel waits for the RPC (PostgreSQL down, for the run).
    admin_execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
    admin_execute(f'ALTER DATABASE "{name}" RENAME TO "{name}_away"')
    try:
        stdout, stderr = process.communicate(timeout=120)
    finally:
        admin_execute(f'ALTER DATABASE "{name}_away" RENAME TO "{name}"')
    assert process.returncode == 2, stdout + stderr
    assert "NOT STORED" in stdout + stderr
    (folder,) = (tmp_path / "unstored").iterdir()
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    assert summary["persisted"] is False and summary["persist_error"]
    assert 'escrow_reconciliation_last_run_success{tenant="all"} 0.0' in (folder / "metrics.prom").read_text(
        encoding="utf-8"
    )
    assert "history and the health check miss this run" in (folder / "report.html").read_text(
        encoding="utf-8"
    )
    # Nothing could be written: the attempt still says running, and its lease expires in minutes.
    assert rows(source, "SELECT status FROM reconciliation_attempts") == [("running",)]
    ((minutes_left,),) = rows(
        source,
        "SELECT CAST(EXTRACT(EPOCH FROM expires_at - now()) / 60 AS DOUBLE PRECISION) FROM reconciliation_leases",
    )
    assert minutes_left <= 10


def _small_files() -> None:
    """The child's files may not grow past 40 KB (the executed notebook needs more): a full disk."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG


def test_a_full_disk_exits_2_in_one_line_and_keeps_the_stored_run(
    source: str, dataset: demo.DemoData, tmp_path: Path
) -> None:
    with Emulator(dataset.ledger_state(0)) as healthy:
        first = start(source, healthy.url, dataset, tmp_path / "first")
        _, first_err = first.communicate(timeout=300)
        assert first.returncode == 1, first_err
        stored = rows(source, "SELECT status, total, mismatch FROM reconciliation_runs")
        findings = rows(source, "SELECT count(*) FROM reconciliation_findings")
        # The same night again, on a disk that fills up while the notebook is written.
        process = start(source, healthy.url, dataset, tmp_path / "full", preexec_fn=_small_files)
        stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 2, stdout + stderr
    failure = [line for line in stderr.splitlines() if "File too large" in line]
    assert len(failure) == 1 and str(tmp_path / "full") in failure[0]
    assert "Traceback" not in stdout + stderr
    (folder,) = (tmp_path / "full").iterdir()
    assert not (folder / "notebook.ipynb").exists()  # never a half notebook under its real name
    # The completed run of the key, its findings and the health's last completed run stand.
    assert rows(source, "SELECT status, total, mismatch FROM reconciliation_runs") == stored
    assert rows(source, "SELECT count(*) FROM reconciliation_findings") == findings
    assert [s for (s,) in rows(source, "SELECT status FROM reconciliation_attempts ORDER BY id")] == [
        "completed",
        "failed",
    ]


def test_two_tenants_at_once_on_one_duckdb_state_file_both_complete(
    source: str, dataset: demo.DemoData, tmp_path: Path
) -> None:
    state = f"duckdb://{tmp_path / 'state.duckdb'}"
    with Emulator(dataset.ledger_state(0)) as healthy:
        runs = {
            tenant: start(
                source,
                healthy.url,
                dataset,
                tmp_path / tenant,
                "--tenant",
                tenant,
                env={"RECONCILE_STATE_DATABASE_URL": state},
            )
            for tenant in ("acme", "globex")
        }
        outcomes = {tenant: process.communicate(timeout=300) for tenant, process in runs.items()}
    for tenant, process in runs.items():
        assert process.returncode == 1, outcomes[tenant][1]
    attempts = rows(state, "SELECT tenant_id, status FROM reconciliation_attempts ORDER BY tenant_id")
    assert attempts == [("acme", "completed"), ("globex", "completed")]
    assert rows(state, "SELECT count(DISTINCT run_key) FROM reconciliation_runs") == [(2,)]
