"""The package runs from its own wheel: built here, installed into a fresh environment outside the
checkout, and `reconcile-audit demo` run there.

The fresh environment gets the wheel with ``--no-deps`` and borrows the third-party packages of
the project's ``.venv`` through a ``.pth`` line: what is checked is the wheel's own content (the
modules, SQL, templates and notebook it carries), without a second download of every dependency.
The checkout never reaches the fresh interpreter: the working folder is outside it and the
editable install's finder is not loaded (a ``.pth`` line adds a folder, it does not run the
``.pth`` files inside it).
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "reconcile_audit"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out), str(ROOT)],
        check=True,
        cwd=out,
    )
    (built,) = out.glob("reconcile_audit-*.whl")
    return built


def test_the_wheel_carries_every_module_and_data_file(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {path.relative_to(ROOT).as_posix() for path in PACKAGE.rglob("*.py")}
    sql = {path.relative_to(ROOT).as_posix() for path in PACKAGE.rglob("*.sql")}
    assert modules <= names, sorted(modules - names)
    assert sql <= names, sorted(sql - names)
    assert "reconcile_audit/notebooks/reconcile_escrow.ipynb" in names
    assert {"reconcile_audit/templates/report.html.j2", "reconcile_audit/templates/report.txt.j2"} <= names
    assert not [name for name in names if name.startswith(("tests/", "benchmarks/"))]


@pytest.mark.slow
def test_demo_runs_from_the_installed_wheel_outside_the_checkout(wheel: Path, tmp_path: Path) -> None:
    # Nothing of this session's configuration, and no path that could show the checkout.
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("DATABASE_URL", "RECONCILE_", "SOROBAN_", "SMTP_", "ALERT_", "PUSHGATEWAY"))
        and name not in {"PYTHONPATH", "VIRTUAL_ENV"}
    }
    env_dir = tmp_path / "fresh-venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", str(wheel)],
        check=True,
        env=environment,
    )
    fresh_site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            env=environment,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    dependencies = sysconfig.get_paths()["purelib"]
    assert dependencies in site.getsitepackages()
    (fresh_site / "borrowed-dependencies.pth").write_text(dependencies + "\n", encoding="utf-8")

    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    where = subprocess.run(
        [
            str(python),
            "-c",
            "import reconcile_audit.resources as r; print(r.__file__); print(r.NOTEBOOK_PATH)",
        ],
        cwd=workdir,
        env=environment,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert all(Path(path).is_relative_to(env_dir) for path in where), where

    done = subprocess.run(
        [str(env_dir / "bin" / "reconcile-audit"), "demo", "--invoices", "200", "--history-runs", "1"],
        cwd=workdir,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 1, done.stdout + done.stderr  # the demo plants findings on purpose
    (run_dir,) = [path for path in (workdir / "reports").iterdir() if path.name != "demo"]
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    assert summary["status"] == "findings" and summary["total"] == 200
    assert (run_dir / "report.html").stat().st_size > 0
    assert not (ROOT / "reports" / run_dir.name).exists()
