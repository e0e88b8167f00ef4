"""reconcile-audit: the nightly escrow reconciliation audit.

The parts (docs/architecture.md), with arrows running Face -> Output -> Compute:

- ``compute``: settings, extract, resolve, ledger, classify, history, persist;
- ``output``: emit, report, summary, notebook views, deliver, metrics;
- ``face``: cli, runner, the run context, demo;
- ``emulator``: the local Stellar RPC, for the demo, tests and benchmarks only.

The public calls are re-exported here: :func:`run` (execute the audit notebook),
:func:`load_settings` and :func:`latest_summary` (the health check's read). They are resolved on
first use, so importing one stage module does not import every part.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("reconcile-audit")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

if TYPE_CHECKING:
    from reconcile_audit.compute.persist import latest_summary
    from reconcile_audit.compute.settings import load_settings
    from reconcile_audit.face.runner import run

_PUBLIC = {
    "run": "reconcile_audit.face.runner",
    "load_settings": "reconcile_audit.compute.settings",
    "latest_summary": "reconcile_audit.compute.persist",
}
__all__ = ["__version__", "latest_summary", "load_settings", "run"]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
