"""reconcile-audit: the nightly escrow reconciliation audit.

Stages, one module each, data flowing one way:
settings -> extract -> resolve -> ledger -> classify -> history -> emit -> persist -> report -> deliver.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("reconcile-audit")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
