"""Prometheus metrics for one run: built from a fresh registry, written to a file, pushed.

A batch job has no process that lives between runs, and the Pushgateway replaces values rather
than adding to them. So every value here is a fact about the run (or about the persisted history)
that the caller hands in, and :func:`build_registry` turns it into metric families once.

The seed's counter ``escrow_reconciliation_mismatches_total`` keeps its name and help text. Its
value is the cumulative number of mismatches over every persisted completed run, so it only grows
from one push to the next and the seed's alert ``increase(...[26h]) > 0`` keeps working.

Push semantics: :func:`push` uses ``pushadd`` (HTTP POST), which replaces only the metric names
present in this push and keeps the others in the group. A failed run leaves
``escrow_reconciliation_last_success_timestamp_seconds`` out of its registry, so the gateway keeps
the timestamp of the last successful run and a staleness alert on it keeps firing. A plain
``push`` (HTTP PUT) would drop that gauge from the group instead.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import unquote, urlsplit, urlunsplit

from prometheus_client import CollectorRegistry, pushadd_to_gateway, write_to_textfile
from prometheus_client.exposition import basic_auth_handler, default_handler
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from reconcile_audit.compute.schemas import CLASSES, AuditStatus, DeliveryStatus
from reconcile_audit.compute.settings import public_url, url_credentials

LOGGER = logging.getLogger(__name__)

PREFIX: Final = "escrow_reconciliation_"
JOB: Final = "escrow_reconciliation"
MISMATCHES_HELP: Final = (
    "Total escrow reconciliation mismatches between DB fundedTotal and on-chain funded_amount"
)
TEXTFILE_STEM: Final = "escrow_reconciliation"
_PLAIN_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


ALL_TENANTS: Final = "all"  # the tenant label of a run over every tenant


def tenant_label(tenant_id: str | None) -> str:
    """The ``tenant`` label of a run's series and Pushgateway group: the tenant id, or ``all``."""
    return tenant_id if tenant_id else ALL_TENANTS


def _frozen(mapping: Mapping[str, float] | None) -> Mapping[str, float] | None:
    return None if mapping is None else MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class RunMetricsInput:
    """What one run knows when it builds its metrics.

    ``tenant``: the ``tenant`` label every series carries (:func:`tenant_label`), so that per-tenant
    runs each keep their own series on the Pushgateway and in the textfile collector.
    ``status``: how the run ended (``escrow_reconciliation_last_run_status``, one series per status).
    ``cumulative_mismatches``: mismatches over all persisted completed runs, this one included
    (``persist.cumulative_mismatches`` after persisting). When persisting failed, pass the
    persisted total plus this run's mismatches; ``None`` (history unreadable) leaves the counter
    out, so the gateway keeps its last value instead of seeing a reset.
    ``class_counts``: invoices per class; ``None`` when the run failed before classifying, which
    leaves the per-class gauges out of the push for the same reason. Missing classes are 0.
    ``findings_by_age``: open findings per (ageing bucket, state) (``HistoryComparison.findings_by_age``);
    ``None`` when the run has no history to age them by, which leaves the gauge out.
    ``unacknowledged``: findings no acknowledgement covers; ``None`` (no history) leaves it out.
    ``stranded``: escrows of invoices outside the audit that still hold or owe funds, or could
    not be read; ``None`` when the run did not check them, which leaves the gauge out.
    ``explained``: mismatches per explain outcome (explained, partial, unexplained, unavailable),
    and ``beyond`` for those past RECONCILE_EXPLAIN_MAX; ``None`` when the stage did not run.
    ``email_bytes``: size of the sent message; ``None`` when no email was attempted.
    ``email_failed``: whether an attempted send failed.
    """

    success: bool
    finished_at_epoch: float
    duration_seconds: float
    tenant: str = ALL_TENANTS
    status: AuditStatus | None = None
    cumulative_mismatches: int | None = None
    class_counts: Mapping[str, int] | None = None
    stage_seconds: Mapping[str, float] = field(default_factory=dict)
    findings_by_age: Mapping[tuple[str, str], int] | None = None
    unacknowledged: int | None = None
    stranded: int | None = None
    explained: Mapping[str, int] | None = None
    email_bytes: int | None = None
    email_failed: bool = False

    def __post_init__(self) -> None:
        # Frozen means the caller cannot change the mappings behind our back either.
        object.__setattr__(self, "class_counts", _frozen(self.class_counts))
        object.__setattr__(self, "findings_by_age", _frozen(self.findings_by_age))
        object.__setattr__(self, "explained", _frozen(self.explained))
        object.__setattr__(self, "stage_seconds", _frozen(self.stage_seconds) or MappingProxyType({}))
        if self.cumulative_mismatches is not None and self.cumulative_mismatches < 0:
            raise ValueError("cumulative_mismatches must not be negative")
        if not self.tenant:
            raise ValueError("tenant must not be empty; a run over every tenant is 'all'")
        unknown = set(self.class_counts or {}) - set(CLASSES)
        if unknown:
            raise ValueError(f"unknown classes {sorted(unknown)}; expected {CLASSES}")


class _RunCollector(Collector):
    """Yields the run's metric families, every series labelled with the run's tenant. Built by
    hand so the counter carries no ``_created`` sample: a batch process would report a new
    creation time on every run."""

    def __init__(self, run: RunMetricsInput) -> None:
        self._run = run

    def _family(self, kind: type[Metric], name: str, documentation: str, value: float) -> Metric:
        family = kind(PREFIX + name, documentation, labels=["tenant"])
        family.add_metric([self._run.tenant], value)  # type: ignore[attr-defined]
        return family

    def _gauges(
        self, name: str, documentation: str, label: str, values: Iterable[tuple[str, float]]
    ) -> Metric:
        """A gauge with one series per ``label`` value, beside the tenant."""
        family = GaugeMetricFamily(PREFIX + name, documentation, labels=["tenant", label])
        for value, number in values:
            family.add_metric([self._run.tenant, value], number)
        return family

    def collect(self) -> Iterable[Metric]:
        run = self._run
        if run.cumulative_mismatches is not None:
            yield self._family(CounterMetricFamily, "mismatches", MISMATCHES_HELP, run.cumulative_mismatches)
        if run.success:
            yield self._family(
                GaugeMetricFamily,
                "last_success_timestamp_seconds",
                "Unix time at which the last successful reconciliation run finished",
                run.finished_at_epoch,
            )
        yield self._family(
            GaugeMetricFamily,
            "last_run_timestamp_seconds",
            "Unix time at which the last reconciliation run finished, successful or not",
            run.finished_at_epoch,
        )
        yield self._family(
            GaugeMetricFamily,
            "last_run_success",
            "1 if the last reconciliation run completed, 0 if it failed",
            1 if run.success else 0,
        )
        if run.status is not None:
            yield self._gauges(
                "last_run_status",
                "1 for the status the last reconciliation run ended in, 0 for the others",
                "status",
                ((status.value, 1 if status == run.status else 0) for status in AuditStatus),
            )
        yield self._family(
            GaugeMetricFamily,
            "run_duration_seconds",
            "Wall-clock duration of the last reconciliation run",
            run.duration_seconds,
        )
        yield self._gauges(
            "stage_duration_seconds",
            "Wall-clock duration of each stage of the last reconciliation run",
            "stage",
            sorted(run.stage_seconds.items()),
        )
        if run.class_counts is not None:
            yield self._gauges(
                "invoices",
                "Invoices in each reconciliation class in the last completed run",
                "class",
                ((name, run.class_counts.get(name, 0)) for name in CLASSES),
            )
        if run.findings_by_age is not None:
            family = GaugeMetricFamily(
                PREFIX + "findings",
                "Open findings (every class but match) of the last completed run, by days since first seen and state",
                labels=["tenant", "bucket", "state"],
            )
            for (bucket, state), number in run.findings_by_age.items():
                family.add_metric([run.tenant, bucket, state], number)
            yield family
        if run.unacknowledged is not None:
            yield self._family(
                GaugeMetricFamily,
                "unacknowledged_findings",
                "Findings of the last completed run that no acknowledgement covers (new, reopened, persisting)",
                run.unacknowledged,
            )
        if run.stranded is not None:
            yield self._family(
                GaugeMetricFamily,
                "stranded_escrows",
                "Escrows of invoices outside the audit (deleted, or out of scope) that still hold or owe "
                "funds, or could not be read, in the last completed run",
                run.stranded,
            )
        if run.explained is not None and "from_shards" not in run.explained:
            yield self._gauges(
                "explained_findings",
                "Mismatches of the last completed run by what the chain said of their cause "
                "(explained, partial, unexplained, unavailable; beyond: past RECONCILE_EXPLAIN_MAX)",
                "outcome",
                sorted(run.explained.items()),
            )
        if run.email_bytes is not None:
            yield self._family(
                GaugeMetricFamily,
                "email_bytes",
                "Size of the last report email in bytes, attachments included",
                run.email_bytes,
            )
        yield self._family(
            GaugeMetricFamily,
            "email_failures",
            "Report emails that failed to send in the last run (0 or 1)",
            1 if run.email_failed else 0,
        )


def build_registry(run: RunMetricsInput) -> CollectorRegistry:
    """A fresh registry holding exactly this run's metrics (never the process-global one)."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(_RunCollector(run))
    return registry


def write_textfile(registry: CollectorRegistry, path: Path) -> Path:
    """Write the exposition text to ``path`` atomically (temp file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(os.fspath(path), registry)
    return path


def textfile_name(tenant: str) -> str:
    """``escrow_reconciliation_<tenant>.prom``: one file per tenant, so one tenant's run never
    replaces another's series. A tenant id that is not a plain file name is hashed."""
    if _PLAIN_NAME.fullmatch(tenant):
        return f"{TEXTFILE_STEM}_{tenant}.prom"
    return f"{TEXTFILE_STEM}_{hashlib.sha256(tenant.encode()).hexdigest()[:16]}.prom"


def write_textfile_dir(registry: CollectorRegistry, directory: Path, tenant: str) -> Path:
    """For node_exporter's textfile collector: it must never read a half-written file, which
    :func:`write_textfile` guarantees by renaming into place."""
    return write_textfile(registry, directory / textfile_name(tenant))


@dataclass(frozen=True)
class PushOutcome:
    status: DeliveryStatus
    detail: str = ""


def push(
    registry: CollectorRegistry,
    url: str | None,
    *,
    tenant: str,
    timeout_seconds: float = 10.0,
) -> PushOutcome:
    """``pushadd`` the registry to the Pushgateway at ``url`` in the group
    ``{job="escrow_reconciliation", tenant=...}``: each tenant's runs replace only that tenant's
    series.

    No ``instance`` label: a batch job's results belong to the job, not to whichever host ran it.
    Credentials in the URL (``http://user:password@gateway:9091``) go out as HTTP basic auth
    through prometheus-client's handler, never in the URL urllib sees, and never in a message.
    A failure is logged and returned, never raised: metrics must not fail the run they describe.
    """
    if not url:
        return PushOutcome(DeliveryStatus.SKIPPED, "no Pushgateway URL configured")
    gateway, handler = _gateway_and_handler(url)
    try:
        pushadd_to_gateway(
            gateway,
            job=JOB,
            registry=registry,
            grouping_key={"tenant": tenant},
            timeout=timeout_seconds,
            handler=handler,
        )
    except Exception as exc:  # urllib raises OSError, HTTPError, ValueError for a bad URL...
        detail = _without_credentials(f"{type(exc).__name__}: {exc}", url)
        LOGGER.warning("pushing metrics to the Pushgateway failed: %s (%s)", detail, public_url(url))
        return PushOutcome(DeliveryStatus.FAILED, detail)
    return PushOutcome(DeliveryStatus.PUSHED)


def check_pushgateway(url: str | None, *, timeout_seconds: float = 10.0) -> PushOutcome:
    """``GET /-/ready`` on the Pushgateway through prometheus-client's handlers (the URL's
    credentials as basic auth, as a push would send them): pushes nothing. SKIPPED without a URL."""
    if not url:
        return PushOutcome(DeliveryStatus.SKIPPED, "PUSHGATEWAY_URL is not set")
    gateway, handler = _gateway_and_handler(url)
    try:
        if urlsplit(gateway).scheme not in ("http", "https"):
            raise ValueError("PUSHGATEWAY_URL must be an http(s) URL")
        handler(
            url=gateway.rstrip("/") + "/-/ready", method="GET", timeout=timeout_seconds, headers=[], data=b""
        )()
    except Exception as exc:  # OSError for HTTP >= 400 and unreachable hosts, timeouts
        detail = _without_credentials(f"{type(exc).__name__}: {exc}", url)
        return PushOutcome(DeliveryStatus.FAILED, f"{public_url(url)}: {detail}")
    return PushOutcome(DeliveryStatus.CHECKED, f"{public_url(url)} is ready; nothing pushed")


def _without_credentials(text: str, url: str) -> str:
    """``text`` with the URL's password and query values masked: urllib's errors may quote them."""
    for secret in url_credentials(url):
        text = text.replace(secret, "***")
    return text


def _gateway_and_handler(url: str) -> tuple[str, Callable[..., Callable[[], None]]]:
    """The URL without its userinfo, and the handler that sends that userinfo as basic auth."""
    parts = urlsplit(url)
    if parts.username is None:
        return url, default_handler
    username, password = unquote(parts.username), unquote(parts.password or "")
    gateway = urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))

    def with_basic_auth(**request: Any) -> Callable[[], None]:
        return basic_auth_handler(**request, username=username, password=password)

    return gateway, with_basic_auth
