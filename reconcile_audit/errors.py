"""The small exception hierarchy and the exit codes: the one place exit codes live.

Each error carries what the user needs to fix the problem, and the exit code it ends a run with.
"""

from __future__ import annotations

from enum import IntEnum

from reconcile_audit.compute.schemas import AuditStatus, HealthStatus


class ExitCode(IntEnum):
    """What ``reconcile-audit`` tells its scheduler (README.md, "Exit codes")."""

    CLEAN = 0  # completed, every invoice matches or its finding is acknowledged
    FINDINGS = 1  # completed, at least one finding that no acknowledgement covers
    FAILED = 2  # the run failed or is incomplete, any crash included
    LEASE_HELD = 3  # another run holds the tenant's lease; nothing was done

    @classmethod
    def for_health(cls, status: HealthStatus) -> ExitCode:
        """``summary``'s exit code: 0 healthy, 1 findings, 2 anything else (not run, stale...)."""
        return {HealthStatus.HEALTHY: cls.CLEAN, HealthStatus.FINDINGS: cls.FINDINGS}.get(status, cls.FAILED)

    @classmethod
    def for_status(cls, status: AuditStatus, *, needs_a_person: bool = True) -> ExitCode:
        """The exit code of a run whose summary says ``status``: findings that are all
        acknowledged (``needs_a_person`` false) exit 0, as the health check reads them."""
        if status == AuditStatus.FINDINGS and not needs_a_person:
            return cls.CLEAN
        return {AuditStatus.CLEAN: cls.CLEAN, AuditStatus.FINDINGS: cls.FINDINGS}.get(status, cls.FAILED)


class ReconcileAuditError(Exception):
    """Base class: every error the tool raises on purpose. Exit code 2 unless a subclass says."""

    exit_code: ExitCode = ExitCode.FAILED


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


class ScopeError(ReconcileAuditError):
    """The audit's scope does not exist: an unknown tenant, or a source without any invoice."""


class ExtractError(ReconcileAuditError):
    """The extract query failed for a reason other than the schema."""


class RpcPreflightError(ReconcileAuditError):
    """The Stellar RPC endpoint is unreachable, unhealthy, or on another network."""


class LeaseHeldError(ReconcileAuditError):
    """Another run holds the per-tenant lease."""

    exit_code = ExitCode.LEASE_HELD

    def __init__(self, tenant: str, holder: str) -> None:
        self.tenant = tenant
        self.holder = holder
        super().__init__(f"another reconciliation run holds the lease for tenant {tenant!r}: {holder}")


class StateLockedError(ReconcileAuditError):
    """Another process kept the DuckDB state file open longer than the bounded wait: no run was
    started (exit 3, like a held lease), and the message names the file and the process."""

    exit_code = ExitCode.LEASE_HELD


class PersistError(ReconcileAuditError):
    """Writing the run or its findings failed. Logged and marked on the run, never raised over findings."""


class StateUnavailableError(PersistError):
    """The state database cannot be reached at all (no server, no such database, bad login): the
    message is the driver's own cause in one line, with the database named by its public URL."""
