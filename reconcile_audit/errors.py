"""The small exception hierarchy. Each error carries what the user needs to fix the problem.

Exit codes (see DESIGN.md): 0 clean, 1 findings, 2 the run failed, 3 another run holds the lease.
"""

from __future__ import annotations


class ReconcileAuditError(Exception):
    """Base class: every error the tool raises on purpose. Exit code 2 unless a subclass says."""

    exit_code: int = 2


class ConfigError(ReconcileAuditError):
    """A setting is missing or malformed. ``setting`` names the parameter or variable."""

    def __init__(self, setting: str, problem: str) -> None:
        self.setting = setting
        self.problem = problem
        super().__init__(f"{setting}: {problem}")


class SourceSchemaError(ReconcileAuditError):
    """The source database does not have the table or column the extract query expects."""

    def __init__(self, table: str | None, column: str | None, detail: str) -> None:
        self.table = table
        self.column = column
        self.detail = detail
        where = ".".join(part for part in (table, column) if part) or "source schema"
        super().__init__(
            f"{where}: {detail}. The extract query needs the tables invoices, escrow_summaries "
            "and escrow_operations with the columns documented in README.md (Configuration)."
        )


class ExtractError(ReconcileAuditError):
    """The extract query failed for a reason other than the schema."""


class RpcPreflightError(ReconcileAuditError):
    """The Stellar RPC endpoint is unreachable, unhealthy, or on another network."""


class LeaseHeldError(ReconcileAuditError):
    """Another run holds the per-tenant lease."""

    exit_code = 3

    def __init__(self, tenant: str, holder: str) -> None:
        self.tenant = tenant
        self.holder = holder
        super().__init__(f"another reconciliation run holds the lease for tenant {tenant!r}: {holder}")


class PersistError(ReconcileAuditError):
    """Writing the run or its findings failed. Logged and marked on the run, never raised over findings."""


class NotebookExecutionError(ReconcileAuditError):
    """A notebook cell failed. ``cell`` names it (its papermill description or index)."""

    def __init__(self, cell: str, detail: str, notebook_path: str) -> None:
        self.cell = cell
        self.detail = detail
        self.notebook_path = notebook_path
        super().__init__(f"notebook cell {cell!r} failed: {detail} (executed notebook: {notebook_path})")
