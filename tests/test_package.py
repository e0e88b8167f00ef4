"""The package as a whole: its public calls, and the parts' import arrows (import-linter)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import reconcile_audit
from reconcile_audit.compute import persist, settings
from reconcile_audit.face import runner

ROOT = Path(__file__).resolve().parents[1]


def test_the_public_calls_are_the_stage_functions() -> None:
    assert reconcile_audit.run is runner.run
    assert reconcile_audit.load_settings is settings.load_settings
    assert reconcile_audit.latest_summary is persist.latest_summary


def test_a_configured_run_imports_neither_the_demo_nor_the_emulator() -> None:
    """What the notebook's first cell imports when DATABASE_URL is set, in a fresh interpreter."""
    code = (
        "import sys\n"
        "from reconcile_audit.compute import classify, extract, history, ledger, resolve\n"
        "from reconcile_audit.face.run import RunContext\n"
        "from reconcile_audit.face import runner\n"
        "from reconcile_audit.output import emit, notebook_views\n"
        "print(sorted(m for m in sys.modules if m.startswith(('reconcile_audit.emulator', 'reconcile_audit.face.demo'))))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_importing_one_stage_does_not_import_every_part() -> None:
    code = "import sys, reconcile_audit.compute.schemas; print(sorted(m for m in sys.modules if m.startswith('reconcile_audit.')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "['reconcile_audit.compute', 'reconcile_audit.compute.schemas']"


def test_the_cli_does_not_load_the_rpc_client() -> None:
    """Issue 14: the CLI waits on the kernel the whole run, and its memory counts in the run's
    peak. It needs the ledger's types, not stellar-sdk and aiohttp (about 50 MB and 0.5 s of
    imports), which the ledger package loads only when its stage's calls are first used."""
    code = (
        "import sys\n"
        "import reconcile_audit.face.cli\n"
        "print(sorted(m for m in ('stellar_sdk', 'aiohttp') if m in sys.modules))\n"
        "from reconcile_audit.compute import ledger\n"
        "from reconcile_audit.compute.ledger import stage\n"
        "print(ledger.read_ledger is stage.read_ledger, ledger.EarlySweep is stage.EarlySweep)\n"
        "print(sorted(m for m in ('stellar_sdk', 'aiohttp') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split("\n")[:3] == ["[]", "True True", "['aiohttp', 'stellar_sdk']"]


def test_the_cli_run_path_does_not_load_pyarrow(tmp_path: Path) -> None:
    """Issue 14: pyarrow (with ADBC's datasets) was 100 MB of the CLI's resident set for the
    whole run, loaded by papermill's HDFS handler, ADBC and the lease's read of a DuckDB state
    database. The CLI's own steps before the kernel starts, then pyarrow still imports."""
    code = (
        "import sys\n"
        "from reconcile_audit.face import cli, runner\n"
        "from reconcile_audit.compute import persist\n"
        "runner.notebook_parameters()\n"
        f"url = 'duckdb:///{tmp_path / 'state.duckdb'}'\n"
        "persist.ping(url)\n"
        "with persist.run_lease(url, None, 'holder', heartbeat=False):\n"
        "    persist.abandon_stale_attempts(url, None, 'run-id', None)\n"
        "print(sorted(m for m in ('pyarrow', 'adbc_driver_manager') if m in sys.modules))\n"
        "import pyarrow, papermill.iorw\n"
        "print(pyarrow.array([1]).to_pylist(), papermill.iorw.HadoopFileSystem.__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split("\n")[:2] == ["[]", "[1] missing_dep"]


def test_the_ledger_package_names_what_it_lacks() -> None:
    from reconcile_audit.compute import ledger

    with pytest.raises(AttributeError, match="has no attribute 'read_everything'"):
        _ = ledger.read_everything


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    binary = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(binary)], cwd=root, capture_output=True, text=True, check=False)


def test_the_contracts_hold_and_catch_a_wrong_arrow(tmp_path: Path) -> None:
    assert lint_imports(ROOT).returncode == 0
    copy = tmp_path / "checkout"
    copy.mkdir()
    shutil.copy(ROOT / "pyproject.toml", copy)
    shutil.copytree(
        ROOT / "reconcile_audit", copy / "reconcile_audit", ignore=shutil.ignore_patterns("__pycache__")
    )
    classify = copy / "reconcile_audit" / "compute" / "classify.py"
    classify.write_text(classify.read_text() + "\nfrom reconcile_audit.output import report  # noqa\n")
    broken = lint_imports(copy)
    assert broken.returncode != 0
    assert "Compute never imports Output or Face BROKEN" in broken.stdout
    assert "Face above Output above Compute BROKEN" in broken.stdout
