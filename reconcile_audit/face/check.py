"""``reconcile-audit check``: the configuration, tried part by part without auditing anything.

Each check reaches one real part the way a run would and stops before doing work: the source's
extract binds under ``LIMIT 0``, the state database is asked what it would let this role do, the
RPC answers ``getNetwork`` and ``getHealth``, the SMTP server takes the login and a NOOP, the
Pushgateway answers ``/-/ready``. Nothing is sent, pushed or written.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Final

from reconcile_audit.compute import extract, ledger, persist
from reconcile_audit.compute.ledger.rpc import rpc_name
from reconcile_audit.compute.schemas import DeliveryStatus
from reconcile_audit.compute.settings import Settings
from reconcile_audit.errors import ExitCode, ReconcileAuditError
from reconcile_audit.output import deliver, metrics


class CheckStatus(StrEnum):
    OK = "ok"
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: CheckStatus
    detail: str

    def line(self) -> str:
        return f"{self.status.value:<7} {self.name:<16} {self.detail}"


def _source(settings: Settings) -> tuple[CheckStatus, str]:
    return CheckStatus.OK, extract.check_source(settings)


def _state(settings: Settings) -> tuple[CheckStatus, str]:
    return CheckStatus.OK, persist.check_state(settings.state_url())


def _rpc(settings: Settings) -> tuple[CheckStatus, str]:
    if not settings.rpc_url:
        return CheckStatus.FAILED, "SOROBAN_RPC_URL is not set"
    facts = ledger.preflight(settings)
    return (
        CheckStatus.OK,
        f"{rpc_name(settings)}: healthy, network {facts.passphrase!r}, protocol "
        f"{facts.protocol_version}, latest ledger {facts.latest_ledger:,}",
    )


_DELIVERY: Final = {
    DeliveryStatus.CHECKED: CheckStatus.OK,
    DeliveryStatus.SKIPPED: CheckStatus.SKIPPED,
    DeliveryStatus.FAILED: CheckStatus.FAILED,
}


def _smtp(settings: Settings) -> tuple[CheckStatus, str]:
    outcome = deliver.check_smtp(settings)
    return _DELIVERY[outcome.status], outcome.detail


def _pushgateway(settings: Settings) -> tuple[CheckStatus, str]:
    outcome = metrics.check_pushgateway(settings.pushgateway_url)
    return _DELIVERY[outcome.status], outcome.detail


CHECKS: Final[tuple[tuple[str, Callable[[Settings], tuple[CheckStatus, str]]], ...]] = (
    ("source database", _source),
    ("state database", _state),
    ("stellar rpc", _rpc),
    ("smtp", _smtp),
    ("pushgateway", _pushgateway),
)


def run_checks(settings: Settings) -> tuple[CheckResult, ...]:
    """Every check, each on its own: one failing never hides the next one's answer."""
    results = []
    for name, check in CHECKS:
        try:
            status, detail = check(settings)
        except ReconcileAuditError as exc:
            status, detail = CheckStatus.FAILED, str(exc)
        except Exception as exc:  # a part answering in a way no check foresaw is still a failed check
            status, detail = CheckStatus.FAILED, f"{type(exc).__name__}: {exc}"
        results.append(CheckResult(name, status, settings.redact(" ".join(detail.split()))))
    return tuple(results)


def exit_code(results: tuple[CheckResult, ...]) -> ExitCode:
    return ExitCode.FAILED if any(r.status == CheckStatus.FAILED for r in results) else ExitCode.CLEAN


def to_json(results: tuple[CheckResult, ...]) -> str:
    return json.dumps(
        {"ok": exit_code(results) == ExitCode.CLEAN, "checks": [asdict(r) for r in results]}, indent=2
    )
