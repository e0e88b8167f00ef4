"""Run the audit notebook with papermill: parameters, kernel, lease, artifacts and the exit code.

The notebook does the work; this module only prepares and guards its execution, so that the
nightly job and an analyst's rerun execute exactly the same cells. Exit codes are
:class:`~reconcile_audit.errors.ExitCode`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any, Final

import nbformat
from traitlets.config import Config

from reconcile_audit.compute import persist
from reconcile_audit.compute.db import check_source_exists
from reconcile_audit.compute.schemas import ClassCounts
from reconcile_audit.compute.settings import ENVIRONMENT, load_settings, url_password
from reconcile_audit.errors import (
    ConfigError,
    ExitCode,
    LeaseHeldError,
    ReconcileAuditError,
    StateLockedError,
    StateUnavailableError,
)
from reconcile_audit.face.run import RUN_EVENTS, RUN_ID_PATTERN, SPOOL, RunContext, StageClock, new_run_id
from reconcile_audit.output.deliver import write_atomically
from reconcile_audit.output.summary import RunSummary
from reconcile_audit.resources import NOTEBOOK_PATH, default_output_dir

log = logging.getLogger(__name__)

KERNEL_NAME: Final = "reconcile-audit"
KERNEL_LOG: Final = "kernel.log"  # the kernel process's own stderr: Jupyter's chatter, kept, not shown

# Parameters the runner sets itself; a user who passes them would fight the run layout.
RUNNER_OWNED: Final = {
    "output_dir": "use --output-dir",
    # A run audits the configured sources or fails; demo data only through `reconcile-audit demo`.
    "demo": "`reconcile-audit run` never audits demo data; use `reconcile-audit demo`",
}
_DESCRIPTION = re.compile(r"^\s*#\s*papermill_description\s*=\s*(\S.*?)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class RunRequest:
    """What one ``reconcile-audit run`` was asked to do. ``parameters`` are notebook parameters."""

    parameters: Mapping[str, Any] = field(default_factory=dict)
    output_dir: Path = field(default_factory=default_output_dir)
    prepare_only: bool = False
    deliver: bool = True
    notebook: Path = NOTEBOOK_PATH
    kernel_name: str = KERNEL_NAME
    progress_bar: bool = False
    cell_timeout_seconds: float | None = None  # None: a cell may run as long as it needs


@dataclass(frozen=True)
class RunOutcome:
    """The result the CLI turns into an exit code and a line for the operator."""

    exit_code: ExitCode
    message: str
    run_id: str | None = None
    run_dir: Path | None = None
    failed_cell: str | None = None
    summary: RunSummary | None = None


def _papermill() -> ModuleType:
    """papermill, imported on first use (half a second; `summary` and `migrate` never need it),
    without its HDFS handler: that imports pyarrow, 63 MB of the CLI's resident set for the whole
    run, for a store the runner never writes to. papermill names HDFS unsupported when pyarrow
    cannot be imported, and pyarrow imports normally again afterwards."""
    if "papermill" not in sys.modules and "pyarrow" not in sys.modules:
        sys.modules["pyarrow"] = None  # type: ignore[assignment]  # import machinery: "not available"
        try:
            import papermill
        finally:
            del sys.modules["pyarrow"]
    import papermill

    return papermill


def notebook_parameters(notebook: Path = NOTEBOOK_PATH) -> dict[str, dict[str, Any]]:
    """The notebook's parameters as papermill sees them: name -> {default, inferred_type_name, help}."""
    return {name: dict(info) for name, info in _papermill().inspect_notebook(str(notebook)).items()}


def coerce_parameter(name: str, value: Any, known: Mapping[str, Mapping[str, Any]]) -> Any:
    """Turn a command-line string into the type the notebook's default has.

    papermill writes the value as a Python literal, so ``"300"`` for an ``int`` parameter must
    become ``300`` here or the notebook would compare a string with numbers.
    """
    if not isinstance(value, str):
        return value
    kind = str(known.get(name, {}).get("inferred_type_name", "str"))
    try:
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "bool":
            lowered = value.strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off"}:
                return False
            raise ValueError("expected true or false")
    except ValueError as exc:
        raise ConfigError(name, f"cannot read {value!r} as {kind}: {exc}") from exc
    return value


def check_parameters(given: Mapping[str, Any], known: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Validate ``given`` against the notebook's parameters; return them coerced.

    Raises :class:`ConfigError` listing unknown names and the known ones, for a parameter the
    runner owns, and for a password inside a URL (papermill would write it into the notebook).
    """
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ConfigError(
            ", ".join(unknown), f"unknown notebook parameter; known: {', '.join(sorted(known))}"
        )
    for name in sorted(set(given) & set(RUNNER_OWNED)):
        raise ConfigError(name, f"set by the runner; {RUNNER_OWNED[name]}")
    checked = {name: coerce_parameter(name, value, known) for name, value in given.items()}
    for name, value in checked.items():
        if isinstance(value, str) and "url" in name and url_password(value):
            raise ConfigError(
                name,
                "a password must not be a parameter (papermill writes parameters into the executed "
                f"notebook); put the URL in the environment, as {ENVIRONMENT.get(name, 'its variable')}",
            )
    return checked


def ensure_kernel(name: str = KERNEL_NAME) -> str:
    """Make sure a kernel ``name`` that runs THIS interpreter exists; register it when missing.

    Cron and systemd start with an empty Jupyter path, so a kernel installed for a user is not
    found; installing into ``sys.prefix`` ties the kernel to the environment that runs the tool.
    """
    # Jupyter's kernel machinery only matters to a run that executes the notebook.
    from ipykernel.kernelspec import install
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    manager = KernelSpecManager()
    try:
        spec = manager.get_kernel_spec(name)
        if spec.argv and Path(spec.argv[0]).resolve() == Path(sys.executable).resolve():
            return name
        log.info("kernel %s runs %s, not this interpreter; registering it again", name, spec.argv[:1])
    except NoSuchKernel:
        log.info("registering Jupyter kernel %s in %s", name, sys.prefix)
    try:
        install(
            kernel_spec_manager=manager, kernel_name=name, display_name=f"Python ({name})", prefix=sys.prefix
        )
    except OSError as exc:
        raise ConfigError(
            f"kernel {name}",
            f"cannot register it in {sys.prefix} ({exc}); run `{sys.executable} -m ipykernel install "
            f"--prefix {sys.prefix} --name {name}` as the environment's owner",
        ) from exc
    return name


def settings_parameters(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """The subset of notebook parameters that are settings (the rest steer the notebook)."""
    return {name: value for name, value in parameters.items() if name in ENVIRONMENT}


@contextmanager
def ipc_kernel_config() -> Iterator[Any]:
    """Kernel manager configuration: IPC sockets in a private (0700) temporary folder.

    The kernel's environment holds the run's secrets; on loopback TCP any local user could reach
    its ports (ipykernel warns about exactly that on every start). nbclient still creates, owns
    and shuts down the kernel; only its transport changes.
    """
    with tempfile.TemporaryDirectory(prefix="reconcile-audit-kernel-") as folder:
        yield Config({"KernelManager": {"transport": "ipc", "ip": os.path.join(folder, "kernel")}})


def failing_cell(notebook_path: Path) -> tuple[str, str]:
    """(name, detail) of the cell that failed in an executed notebook.

    The cell with an error output (or papermill's exception mark) wins; failing that, the cell
    papermill last saw running (a timeout or a dead kernel leaves no error output). The name is
    its ``papermill_description`` when it has one, else its position.
    """
    try:
        notebook = nbformat.read(notebook_path, as_version=4)
    except (OSError, ValueError):
        return "unknown", "the executed notebook could not be read"
    running: tuple[str, str] | None = None
    for index, cell in enumerate(notebook.cells):
        errors = [out for out in cell.get("outputs", []) if out.get("output_type") == "error"]
        papermill_meta = cell.get("metadata", {}).get("papermill", {})
        match = _DESCRIPTION.search(cell.get("source", ""))
        name = match.group(1) if match else f"cell {index}"
        if errors or papermill_meta.get("exception") is True:
            detail = f"{errors[0]['ename']}: {errors[0]['evalue']}" if errors else "cell raised"
            return name, detail
        if running is None and papermill_meta.get("status") == "running":
            running = (name, "the cell did not finish")
    return running or ("unknown", "papermill reported an error but no cell carries one")


_SCRUB_CHUNK: Final = 1 << 20  # characters read at a time: a 300 MB results file never sits in memory


def scrub_secrets(directory: Path, secret_values: tuple[str, ...]) -> list[Path]:
    """Replace every secret in the run's text artifacts with ``***``; return the files changed.

    Tracebacks and driver messages can echo a connection string; the executed notebook keeps
    cell outputs verbatim, so this is the last line of defence, not the first. Each file is
    streamed in chunks (a secret across two chunks is still found) and rewritten only when it
    held one; files that are not UTF-8 text, and Parquet, are left alone.
    """
    values = tuple(v for v in secret_values if v)
    if not values:
        return []
    return [
        path
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.suffix not in {".parquet", ".png"} and _scrub_file(path, values)
    ]


def _scrub_file(path: Path, values: tuple[str, ...]) -> bool:
    """Stream ``path`` into a sibling with ``values`` replaced; keep it only if anything changed."""
    # The unflushed tail: a secret that starts in it ends in the next chunk.
    keep = max(len(value) for value in values) - 1
    scratch = path.with_name(path.name + ".scrub")
    changed = False
    try:
        with (
            path.open(encoding="utf-8", newline="") as source,
            scratch.open("w", encoding="utf-8", newline="") as target,
        ):
            pending = ""
            while chunk := source.read(_SCRUB_CHUNK):
                pending += chunk
                for value in values:
                    if value in pending:
                        pending = pending.replace(value, "***")
                        changed = True
                cut = len(pending) - keep
                if cut > 0:
                    target.write(pending[:cut])
                    pending = pending[cut:]
            target.write(pending)
    except UnicodeDecodeError:
        changed = False
    if changed:
        os.replace(scratch, path)
    else:
        scratch.unlink(missing_ok=True)
    return changed


@contextmanager
def environment(overrides: Mapping[str, str] | None) -> Iterator[None]:
    """Set variables for the duration of a run: the kernel inherits this process's environment."""
    if not overrides:
        yield
        return
    saved = {name: os.environ.get(name) for name in overrides}
    os.environ.update(overrides)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def _kernel_stderr_into(path: Path) -> Iterator[None]:
    """Send the kernel's stderr (Jupyter's own chatter) to ``path``, not to the operator.

    The kernel is a child process and inherits file descriptor 2, so that descriptor points at
    the file for the block; this process's Python-level ``sys.stderr`` (progress bar, logging)
    moves to a copy of the console's descriptor, so the operator still sees what matters.
    """
    try:
        console_is_fd2 = sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # a captured stream (tests, embedding)
        console_is_fd2 = False
    sys.stderr.flush()
    saved = os.dup(2)
    previous = sys.stderr
    if console_is_fd2:
        sys.stderr = os.fdopen(os.dup(saved), "w", buffering=1, encoding="utf-8", errors="replace")
    with path.open("ab") as sink:
        os.dup2(sink.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        if console_is_fd2:
            sys.stderr.close()
            sys.stderr = previous


class KernelLogFollower(threading.Thread):
    """Follows the kernel's ``run.jsonl`` and repeats on this process's console every warning and
    error (persist, email and push failures, one per mismatch) and the records the run marks for
    the console (the stage timings): the cron or Kubernetes log must not show two lines only."""

    def __init__(self, path: Path) -> None:
        super().__init__(name="reconcile-audit-log-follower", daemon=True)
        self.path = path
        self._stopping = threading.Event()
        self._offset = 0
        self.stage: str | None = None  # the stage the kernel last started

    def run(self) -> None:
        while not self._stopping.wait(0.2):
            self._drain()

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=5)
        self._drain()  # what the kernel wrote last

    def _drain(self) -> None:
        try:
            with self.path.open("rb") as stream:
                stream.seek(self._offset)
                chunk = stream.read()
        except FileNotFoundError:
            return
        if b"\n" not in chunk:
            return  # nothing whole yet: a line being written is read when it ends
        complete, _, _ = chunk.rpartition(b"\n")
        self._offset += len(complete) + 1
        for line in complete.decode("utf-8", "replace").splitlines():
            self._repeat(line)

    def _repeat(self, line: str) -> None:
        try:
            event = json.loads(line)
            level = logging.getLevelName(event["level"])
        except (ValueError, KeyError, TypeError):
            return
        self.stage = event.get("stage") or self.stage
        if not isinstance(level, int) or (level < logging.WARNING and not event.get("console")):
            return
        record = logging.makeLogRecord(
            {
                "name": event.get("logger", "reconcile_audit"),
                "levelno": level,
                "levelname": event["level"],
                "msg": event.get("message", ""),
                "created": datetime.fromisoformat(event["time"]).timestamp()
                if "time" in event
                else time.time(),
            }
        )
        logging.getLogger(record.name).handle(record)


def _settle_notebook(executing: Path, final: Path) -> None:
    """Rename the executed notebook into place when it is whole; otherwise keep it aside.

    On a full disk papermill can leave half a JSON document: that must never stand as the audit
    record under its real name.
    """
    if not executing.exists():
        return
    try:
        nbformat.read(executing, as_version=4)
    except (OSError, ValueError) as exc:
        log.error("the executed notebook could not be written whole (%s); kept as %s", exc, executing)
        return
    os.replace(executing, final)


def _running_cell(notebook_out: Path, follower: KernelLogFollower) -> str:
    """The cell that was running when the kernel died, timed out or was stopped.

    papermill then marks every cell completed, so the stage the kernel last logged as started
    names it; before the first stage, the notebook's own record (or "kernel") does.
    """
    follower.stop()
    if follower.stage is not None:
        return follower.stage
    cell, _ = failing_cell(notebook_out) if notebook_out.exists() else ("kernel", "")
    return cell if cell != "unknown" else "kernel"


class RunInterrupted(BaseException):
    """SIGTERM or SIGINT arrived while the notebook ran (systemd, Kubernetes, Ctrl-C).

    A BaseException like KeyboardInterrupt, so that no ``except Exception`` on the way swallows
    it; the runner catches it, lets papermill shut the kernel down, and records the run."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name


@contextmanager
def _signals_interrupt() -> Iterator[None]:
    """Turn SIGTERM and SIGINT into :class:`RunInterrupted` for the block (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, _frame: object) -> None:
        # Once is enough: the recording that follows must not be interrupted by a second signal.
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, signal.SIG_IGN)
        raise RunInterrupted(signal.Signals(signum).name)

    previous = {number: signal.signal(number, interrupt) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _record_failure(
    context: RunContext, request: RunRequest, *, cell: str | None, detail: str, state_reachable: bool = True
) -> RunSummary | None:
    """Record the failed run (state DB, artifacts, metrics) and write summary.json. Never raises.

    The notebook died part-way, so the runner is the only one left to tell the health check and
    the alerting that this night failed.
    """
    settings = context.settings
    message = settings.redact(f"cell {cell!r} failed: {detail}" if cell else detail)
    try:
        return context.record_failure(
            message, send=request.deliver, failed_cell=cell, state_reachable=state_reachable
        )
    except Exception as exc:  # the summary.json below must be written whatever broke above
        problem = settings.redact(f"{type(exc).__name__}: {exc}")
        log.error("recording the failed run also failed: %s", problem)
    # Only the summary: what every reader of the run folder looks at first.
    facts = context.facts(
        None, None, failure_message=f"{message}; recording the failure also failed: {problem}"
    )
    summary = RunSummary.from_run(facts, ClassCounts.zero(), None, redact=settings.redact, failed_cell=cell)
    try:
        write_atomically(
            context.out_dir / "summary.json",
            lambda path: path.write_text(summary.to_json(), encoding="utf-8"),
        )
    except OSError as exc:
        log.error("could not write summary.json: %s", exc)
    return summary


# Polars' jemalloc keeps freed pages for half a second to a second (polars writes that default
# into _RJEM_MALLOC_CONF when imported, before any value of the operator's), and the kernel frees
# and allocates hundreds of MB within a stage: handed back at once instead, classify's peak at 1M
# invoices fell from 2.66 to 2.42 GB (benchmarks/README.md). jemalloc takes a key's last value.
KERNEL_ALLOCATOR: Final = "dirty_decay_ms:0,muzzy_decay_ms:0"
# What polars itself writes there, once per Python process that imports it along the way.
_POLARS_DEFAULTS: Final = frozenset(
    {"dirty_decay_ms:500", "muzzy_decay_ms:1000", "thp:always", "metadata_thp:always"}
)


def kernel_allocator() -> dict[str, str]:
    """The kernel's jemalloc settings: freed pages returned at once, unless the operator set their own."""
    current = os.environ.get("_RJEM_MALLOC_CONF")
    if current and not set(current.split(",")) <= _POLARS_DEFAULTS:
        return {}  # polars appended the operator's value to its default: theirs stands
    return {"_RJEM_MALLOC_CONF": f"{current},{KERNEL_ALLOCATOR}" if current else KERNEL_ALLOCATOR}


def run(request: RunRequest, environ: Mapping[str, str] | None = None) -> RunOutcome:
    """Execute (or only prepare) the notebook for one run. Never raises a ReconcileAuditError.

    ``environ`` adds variables for this run only (the demo passes DATABASE_URL and the emulator's
    SOROBAN_RPC_URL this way); secrets must arrive there, never in ``request.parameters``.
    """
    papermill = _papermill()
    from papermill.exceptions import PapermillExecutionError

    environ = {**kernel_allocator(), **(environ or {})}
    clock = StageClock()
    try:
        known = notebook_parameters(request.notebook)
        parameters = check_parameters(request.parameters, known)
        with environment(environ):
            settings = load_settings(settings_parameters(parameters))
        check_source_exists(settings.source_url())
        settings.state_url()
    except ConfigError as exc:
        return RunOutcome(ExitCode.FAILED, f"configuration: {exc}")

    run_id = new_run_id(clock.started_at)
    run_dir = request.output_dir.resolve() / run_id
    context = RunContext.create(settings, run_id=run_id, out_dir=run_dir, clock=clock)
    run_key = context.run_key
    run_dir.mkdir(parents=True, exist_ok=False)
    notebook_out = run_dir / "notebook.ipynb"
    injected = {**parameters, "output_dir": str(run_dir), "run_key": run_key, "run_id": run_id, "demo": False}
    if "deliver" in known:
        injected["deliver"] = request.deliver and bool(parameters.get("deliver", True))
    if "progress" in known and "progress" not in parameters:
        # A text progress bar would only add noise to the executed notebook kept as the record.
        injected["progress"] = False
    injected = {name: value for name, value in injected.items() if name in known}

    if request.prepare_only:
        papermill.execute_notebook(
            str(request.notebook), str(notebook_out), parameters=injected, prepare_only=True
        )
        return RunOutcome(
            ExitCode.CLEAN, f"prepared notebook: {notebook_out}", run_id=run_id, run_dir=run_dir
        )

    state_url = settings.state_url()
    holder = persist.holder_name(run_id)
    failure: tuple[str, str] | None = None
    try:
        persist.ping(state_url)
    except StateUnavailableError as exc:
        # The real cause, first and alone; the failure is still reported and pushed, as an
        # unreachable database is exactly what the alerts are for.
        with environment(environ):
            return _failed(context, request, None, str(exc), state_reachable=False)
    try:
        with environment(environ):
            kernel = ensure_kernel(request.kernel_name)
            with persist.run_lease(state_url, settings.tenant_id, holder, shard=settings.shard):
                # Under the lease no other attempt of the scope is alive: one still marked
                # running was killed, and is closed as abandoned before this one starts.
                persist.abandon_stale_attempts(state_url, settings.tenant_id, run_id, settings.shard)
                follower = KernelLogFollower(run_dir / RUN_EVENTS)
                follower.start()
                # papermill rewrites the executed notebook after every cell; it becomes
                # notebook.ipynb only when whole (see _settle_notebook).
                executing = run_dir / ".notebook.partial.ipynb"
                try:
                    with (
                        ipc_kernel_config() as config,
                        _signals_interrupt(),
                        _kernel_stderr_into(run_dir / KERNEL_LOG),
                    ):
                        papermill.execute_notebook(
                            str(request.notebook),
                            str(executing),
                            parameters=injected,
                            kernel_name=kernel,
                            progress_bar=request.progress_bar,
                            execution_timeout=request.cell_timeout_seconds,
                            config=config,
                        )
                except PapermillExecutionError:
                    failure = failing_cell(executing)
                except RunInterrupted as stop:
                    log.error(
                        "%s received: stopping the kernel and recording the run as failed", stop.signal_name
                    )
                    failure = (_running_cell(executing, follower), f"stopped by {stop.signal_name}")
                except Exception as exc:  # a timeout, a dead kernel, a full disk
                    cause = f"{type(exc).__name__}: {exc}"
                    if isinstance(exc, OSError) and exc.filename is None:
                        cause += f" (writing the run folder {run_dir})"
                    failure = (_running_cell(executing, follower), cause)
                finally:
                    follower.stop()
                    _settle_notebook(executing, notebook_out)
                    # Before a failure is recorded: a spool that filled the disk would leave no
                    # room for the failed run's summary.
                    shutil.rmtree(run_dir / SPOOL, ignore_errors=True)
                if failure is not None:
                    # Still under the lease: no other run may start before this one is recorded.
                    return _failed(context, request, *failure)
    except (LeaseHeldError, StateLockedError) as exc:
        # The run never started: nothing of it should remain to be mistaken for a result.
        _remove_empty(run_dir)
        return RunOutcome(ExitCode.LEASE_HELD, str(exc), run_id=run_id)
    except ReconcileAuditError as exc:
        # The state database or the kernel setup failed before the notebook ran.
        with environment(environ):
            return _failed(context, request, None, str(exc))
    finally:
        if run_dir.exists():
            scrub_secrets(run_dir, settings.secrets)
        prune_run_folders(request.output_dir.resolve(), keep=settings.keep_runs, current=run_id)

    return completed_outcome(run_id, run_dir)


def prune_run_folders(output_dir: Path, *, keep: int, current: str) -> list[Path]:
    """Delete the run folders of ``output_dir`` beyond the newest ``keep``; return those deleted.

    Only folders named as runs are touched. The run just made and the latest completed one (its
    ``summary.json`` says clean or findings) are kept whatever their age: a week of failures must
    not take away the last good record. A folder that cannot be deleted is logged and kept.
    """
    try:
        runs = sorted(
            (path for path in output_dir.iterdir() if path.is_dir() and RUN_ID_PATTERN.fullmatch(path.name)),
            key=lambda path: path.name,
        )
    except OSError as exc:
        log.warning("could not list the run folders of %s: %s", output_dir, exc)
        return []
    spared = {current}
    for path in reversed(runs):
        if _audited(path):
            spared.add(path.name)
            break
    removed = []
    for path in runs[: max(0, len(runs) - keep)]:
        if path.name in spared:
            continue
        try:
            shutil.rmtree(path)
        except OSError as exc:
            log.warning("could not delete the old run folder %s: %s", path, exc)
            continue
        removed.append(path)
    if removed:
        log.info("deleted %d run folders beyond RECONCILE_KEEP_RUNS=%d", len(removed), keep)
    return removed


def _audited(run_dir: Path) -> bool:
    try:
        return RunSummary.from_json((run_dir / "summary.json").read_text(encoding="utf-8")).status.audited
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _failed(
    context: RunContext, request: RunRequest, cell: str | None, detail: str, *, state_reachable: bool = True
) -> RunOutcome:
    """``cell`` is the notebook cell that failed, or None when the run failed around the notebook."""
    summary = _record_failure(context, request, cell=cell, detail=detail, state_reachable=state_reachable)
    notebook = context.out_dir / "notebook.ipynb"
    detail = context.settings.redact(detail)
    if cell is not None and notebook.exists():
        message = f"notebook cell {cell!r} failed: {detail} (executed notebook: {notebook})"
    else:
        message = detail
    return RunOutcome(
        ExitCode.FAILED,
        message,
        run_id=context.run_id,
        run_dir=context.out_dir,
        failed_cell=cell,
        summary=summary,
    )


def completed_outcome(run_id: str, run_dir: Path) -> RunOutcome:
    """The outcome of a run whose summary.json was written: its exit code and line."""
    summary_path = run_dir / "summary.json"
    try:
        summary = RunSummary.from_json(summary_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return RunOutcome(
            ExitCode.FAILED,
            f"the notebook finished but wrote no readable summary.json ({type(exc).__name__}: {exc})",
            run_id=run_id,
            run_dir=run_dir,
        )
    report = run_dir / "report.html"
    message = f"{summary.status.upper()}: {_attention(summary)}; report: {report}"
    exit_code = ExitCode.for_status(summary.status, needs_a_person=summary.needs_a_person)
    if not summary.persisted:
        # The audit ran, but history, health and the counter do not have it: not a result.
        exit_code = ExitCode.FAILED
        message = f"NOT STORED: {summary.persist_error}; {message}"
    return RunOutcome(
        exit_code,
        message,
        run_id=run_id,
        run_dir=run_dir,
        summary=summary,
    )


def _attention(summary: RunSummary) -> str:
    counts = summary.class_counts
    if not counts.non_match:
        return f"all {counts.total:,} invoices match"
    if not summary.acknowledged:
        return f"{counts.non_match:,} of {counts.total:,} invoices need attention"
    return (
        f"{counts.non_match:,} of {counts.total:,} invoices have findings: "
        f"{summary.unacknowledged or 0:,} need a person, {summary.acknowledged:,} acknowledged"
    )


def _remove_empty(directory: Path) -> None:
    try:
        directory.rmdir()
    except OSError:
        pass
