"""The ``reconcile-audit`` command: run, merge, demo, check, summary, ack, unack, acks, unlock,
migrate, version.

Exit codes: :class:`reconcile_audit.errors.ExitCode` (0 clean, 1 findings, 2 failed, 3 lease held).
"""

from __future__ import annotations

import getpass
import json
import logging
import re
import sys
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Final

import polars as pl
import typer

from reconcile_audit import __version__
from reconcile_audit.compute import persist
from reconcile_audit.compute.lifecycle import AckAction
from reconcile_audit.compute.persist import acks as acks_store
from reconcile_audit.compute.settings import ENVIRONMENT, load_settings, redact_url
from reconcile_audit.errors import ExitCode, ReconcileAuditError
from reconcile_audit.face import runner
from reconcile_audit.face.run import TEXT_LOG_FORMAT, JsonLogFormatter
from reconcile_audit.face.runner import RunOutcome, RunRequest
from reconcile_audit.resources import OUTPUT_DIR_VARIABLE, default_output_dir

log = logging.getLogger(__name__)

app = typer.Typer(
    name="reconcile-audit",
    help="Nightly escrow reconciliation audit: database invoices against Soroban escrow contracts.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _environment_epilog(*names: str) -> str:
    """The environment variables a command reads, for its --help (each on its own line)."""
    variables = [ENVIRONMENT[name] for name in names] if names else list(ENVIRONMENT.values())
    return "Environment: " + ", ".join(dict.fromkeys(variables)) + "."


_STATE_VARIABLES: Final = ("database_url", "state_database_url", "tenant_id")


def _show_version(value: bool) -> None:
    if value:
        print(__version__)
        raise typer.Exit(ExitCode.CLEAN)


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_show_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Nightly escrow reconciliation audit: database invoices against Soroban escrow contracts.

    Exit codes: 0 clean, 1 findings, 2 failed, 3 another run holds the lease.
    """


OutputDir = Annotated[
    Path | None,
    typer.Option(
        "--output-dir",
        "-o",
        envvar=OUTPUT_DIR_VARIABLE,
        show_default="reports/ in the working folder",
        help="Artifacts go to <output-dir>/<run_id>/.",
    ),
]


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


class _ConsoleHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time: the runner points it at the console
    while the kernel's own stderr goes to a file."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _configure_logging(verbose: bool, log_format: LogFormat = LogFormat.TEXT) -> None:
    handler = _ConsoleHandler()
    handler.setFormatter(
        JsonLogFormatter() if log_format == LogFormat.JSON else logging.Formatter(TEXT_LOG_FORMAT)
    )
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler], force=True)


LogFormatOption = Annotated[
    LogFormat, typer.Option("--log-format", help="Console log lines as text, or one JSON object per line.")
]


def _parse_parameters(pairs: list[str], extra: list[str]) -> dict[str, str]:
    """``-p name=value``, or papermill's ``-p name value``: click takes ``name`` as the option's
    value and leaves ``value`` among the extra arguments, in order, so each bare name takes the
    next of them."""
    parameters: dict[str, str] = {}
    values = list(extra)
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            if not values:
                raise typer.BadParameter(
                    f"{pair!r}: expected name=value or name value", param_hint="-p/--parameter"
                )
            value = values.pop(0)
        parameters[name.strip()] = value
    if values:
        raise typer.BadParameter(f"unexpected arguments {values!r}", param_hint="-p/--parameter")
    return parameters


def _finish(outcome: RunOutcome) -> None:
    stream = sys.stdout if outcome.exit_code in (ExitCode.CLEAN, ExitCode.FINDINGS) else sys.stderr
    print(outcome.message, file=stream)
    if outcome.failed_cell:
        print(f"failed cell: {outcome.failed_cell}", file=sys.stderr)
    if outcome.run_dir and outcome.run_dir.exists():
        print(f"run folder: {outcome.run_dir}", file=stream)
    raise typer.Exit(outcome.exit_code)


@app.command(
    context_settings={"allow_extra_args": True},
    epilog=_environment_epilog(),
)
def run(
    context: typer.Context,
    parameter: Annotated[
        list[str] | None,
        typer.Option(
            "--parameter",
            "-p",
            help="Notebook parameter as name=value or name value (repeatable). See `papermill --help-notebook`.",
        ),
    ] = None,
    output_dir: OutputDir = None,
    tenant: Annotated[str | None, typer.Option(help="Reconcile one tenant only.")] = None,
    run_key: Annotated[
        str | None, typer.Option(help="Idempotency key; default: <tenant or all>:<UTC date>.")
    ] = None,
    shard: Annotated[
        str | None,
        typer.Option(
            help="I/N: reconcile only shard I (0-based) of N of the invoices, by a hash of their id, as "
            "part of the run key; `merge` then combines the N shards. Default: $RECONCILE_SHARD, else all.",
        ),
    ] = None,
    prepare_only: Annotated[
        bool, typer.Option("--prepare-only", help="Write the parameterised notebook without running it.")
    ] = False,
    deliver: Annotated[
        bool, typer.Option(help="Send the email and push metrics when they are configured.")
    ] = True,
    cell_timeout: Annotated[
        float | None,
        typer.Option(min=1, help="Fail the run when one cell runs longer than this many seconds."),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    log_format: LogFormatOption = LogFormat.TEXT,
) -> None:
    """Execute the audit notebook and write report, results and metrics to <output-dir>/<run_id>/.

    Exit 0 clean, 1 findings, 2 failed, 3 another run holds the lease. Secrets come from the
    environment only (DATABASE_URL's password, SMTP_PASSWORD), never from -p.
    """
    _configure_logging(verbose, log_format)
    parameters: dict[str, object] = dict(_parse_parameters(parameter or [], list(context.args)))
    if tenant is not None:
        parameters["tenant_id"] = tenant
    if run_key is not None:
        parameters["run_key"] = run_key
    if shard is not None:
        parameters["shard"] = shard
    request = RunRequest(
        parameters=parameters,
        output_dir=output_dir or default_output_dir(),
        prepare_only=prepare_only,
        deliver=deliver,
        progress_bar=sys.stderr.isatty(),
        cell_timeout_seconds=cell_timeout,
    )
    _finish(runner.run(request))


@app.command(epilog=_environment_epilog())
def merge(
    run_key: Annotated[
        str, typer.Option(help="The run key whose shards to merge (as given to `run --shard`).")
    ],
    tenant: Annotated[str | None, typer.Option(help="The tenant scope the shards ran for.")] = None,
    shards: Annotated[
        int | None,
        typer.Option(
            min=1, help="How many shards the key was split into. Default: as the latest stored shard says."
        ),
    ] = None,
    wait: Annotated[
        float,
        typer.Option(
            min=0, help="Wait up to this many seconds for all --shards to store their result before merging."
        ),
    ] = 0.0,
    output_dir: OutputDir = None,
    deliver: Annotated[
        bool, typer.Option(help="Send the email and push metrics when they are configured.")
    ] = True,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    log_format: LogFormatOption = LogFormat.TEXT,
) -> None:
    """Combine the stored shards of a run key into its whole result: report, summary, metrics.

    Exit 0 clean, 1 findings, 2 failed or incomplete (a shard is missing or did not complete: run
    it again, then merge again), 3 another run holds the lease.
    """
    from reconcile_audit.face.merge import MergeRequest
    from reconcile_audit.face.merge import merge as merge_run

    _configure_logging(verbose, log_format)
    request = MergeRequest(
        run_key=run_key,
        tenant_id=tenant,
        shard_count=shards,
        output_dir=output_dir or default_output_dir(),
        deliver=deliver,
        wait_seconds=wait,
    )
    _finish(merge_run(request))


@app.command(
    epilog="Environment: none of the operator's (the demo builds its own database and RPC), but with "
    "--deliver: SMTP_HOST, SMTP_PORT, SMTP_USER, SMTP_PASSWORD, SMTP_STARTTLS, ALERT_EMAIL_TO, "
    "ALERT_EMAIL_FROM, RECONCILE_EMAIL_MAX_ATTACHMENT_BYTES, RECONCILE_REPORT_BASE_URL, PUSHGATEWAY_URL."
)
def demo(
    invoices: Annotated[int, typer.Option(min=50, help="Synthetic invoices to reconcile.")] = 10_000,
    output_dir: OutputDir = None,
    history_runs: Annotated[
        int, typer.Option(min=0, max=10, help="Earlier nightly runs to replay first, for the trend.")
    ] = 3,
    deliver: Annotated[
        bool,
        typer.Option(
            "--deliver",
            help="Email the demo's report and push its metrics with the delivery settings of the environment.",
        ),
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    log_format: LogFormatOption = LogFormat.TEXT,
) -> None:
    """Build a local demo database and emulator, then run the same audit as `run` (no network)."""
    # The demo pulls in the emulator, which no other command needs.
    from reconcile_audit.face import demo as demo_module

    _configure_logging(verbose, log_format)
    outcome = demo_module.run_demo(
        invoices=invoices,
        output_dir=output_dir,
        history_runs=history_runs,
        progress=sys.stderr.isatty(),
        deliver=deliver,
    )
    _finish(outcome)


@app.command(epilog=_environment_epilog(*_STATE_VARIABLES, "stale_after_hours"))
def summary(
    as_json: Annotated[bool, typer.Option("--json", help="Print the health as JSON.")] = False,
    tenant: Annotated[str | None, typer.Option(help="The tenant's latest run.")] = None,
) -> None:
    """The latest run and the health status: not_run, stale, healthy, findings, incomplete or failed.

    Exit 0 healthy, 1 findings, 2 anything else: a probe for the backend and for Kubernetes.
    """
    try:
        settings = load_settings({"tenant_id": tenant} if tenant else {})
        health = persist.latest_summary(
            settings.state_url(),
            settings.tenant_id,
            stale_after_hours=settings.stale_after_hours,
            sla_days=settings.finding_sla_days,
        )
    except ReconcileAuditError as exc:
        print(f"summary: {exc}", file=sys.stderr)
        raise typer.Exit(exc.exit_code) from exc
    if as_json:
        print(health.to_json())
    else:
        data = json.loads(health.to_json())
        for key, value in data.items():
            print(f"{key}: {value}")
    raise typer.Exit(ExitCode.for_health(health.status))


def _parse_until(text: str | None) -> datetime | None:
    """``--until``: a date (the start of that UTC day) or an ISO time with its offset."""
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise typer.BadParameter(f"{text!r} is not a date (2026-12-31) or an ISO time") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _os_user() -> str:
    """``--by``'s default; a container without a user name must say who with --by."""
    try:
        return getpass.getuser()
    except (KeyError, OSError) as exc:
        raise ValueError("no OS user name to record: say who with --by") from exc


def _finding_lines(findings: pl.DataFrame) -> list[str]:
    return [
        f"  {row['finding_id']}  tenant {row['tenant_id'] or '-'}  {row['reason']}"[:200]
        for row in findings.iter_rows(named=True)
    ]


def _acknowledge(
    action: AckAction,
    finding_or_invoice: str | None,
    *,
    reason: str,
    by: str | None,
    until: str | None = None,
    tenant: str | None = None,
    reason_code: str | None = None,
    yes: bool = False,
) -> None:
    command = action.value
    if (finding_or_invoice is None) == (tenant is None):
        print(
            f"{command}: name one FINDING_OR_INVOICE, or --tenant (with --reason-code) in bulk",
            file=sys.stderr,
        )
        raise typer.Exit(ExitCode.FAILED)
    now = datetime.now(UTC)
    try:
        settings = load_settings({})
        url = settings.state_url()
        acknowledgement = acks_store.Acknowledgement(
            action, by or _os_user(), reason, now, _parse_until(until)
        )
        judged = acks_store.findings_with_acks(url, now, sla_days=settings.finding_sla_days)
    except (ReconcileAuditError, ValueError) as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        raise typer.Exit(ExitCode.FAILED) from exc
    chosen = acks_store.targets(
        judged, finding_or_invoice=finding_or_invoice, tenant_id=tenant, reason_code=reason_code
    )
    if action == AckAction.UNACK:
        chosen = acks_store.holding(chosen)
    named = finding_or_invoice or f"tenant {tenant!r}" + (
        f" with reason code {reason_code!r}" if reason_code else ""
    )
    if chosen.is_empty():
        what = "acknowledged finding" if action == AckAction.UNACK else "open finding"
        print(f"{command}: no {what} matches {named} in the latest completed runs", file=sys.stderr)
        raise typer.Exit(ExitCode.FAILED)
    verb = "acknowledge" if action == AckAction.ACK else "withdraw the acknowledgement of"
    print(f"{verb} {chosen.height:,} finding{'s' if chosen.height != 1 else ''} of {named}:")
    print("\n".join(_finding_lines(chosen.head(20))))
    if chosen.height > 20:
        print(f"  ... and {chosen.height - 20:,} more")
    if (
        tenant is not None
        and not yes
        and not typer.confirm(f"{verb} these {chosen.height:,}?", default=False)
    ):
        print(f"{command}: nothing recorded", file=sys.stderr)
        raise typer.Exit(ExitCode.FAILED)
    try:
        written = acks_store.record(url, chosen, acknowledgement)
    except ReconcileAuditError as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        raise typer.Exit(ExitCode.FAILED) from exc
    until_text = "" if acknowledgement.until is None else f" until {acknowledgement.until.isoformat()}"
    print(
        f"recorded {written:,} {command} row{'s' if written != 1 else ''} by {acknowledgement.by}{until_text}"
    )


_REASON_HELP: Final = "Why (mandatory): it is kept with the acknowledgement and shown in every report."


@app.command(epilog=_environment_epilog(*_STATE_VARIABLES, "finding_sla_days"))
def ack(
    finding_or_invoice: Annotated[
        str | None,
        typer.Argument(help="A finding id (INV-7:mismatch/amount) or an invoice id (all its findings)."),
    ] = None,
    reason: Annotated[str, typer.Option(help=_REASON_HELP)] = "",
    until: Annotated[
        str | None, typer.Option(help="Snooze until this date or time (UTC); then the finding reopens.")
    ] = None,
    by: Annotated[str | None, typer.Option(help="Who acknowledges. Default: the OS user.")] = None,
    tenant: Annotated[str | None, typer.Option(help="Bulk: every open finding of this tenant.")] = None,
    reason_code: Annotated[
        str | None, typer.Option(help="Bulk, with --tenant: only this reason code.")
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Bulk: do not ask for confirmation.")] = False,
) -> None:
    """Acknowledge open findings of the latest completed runs: known, owned, here is why.

    The acknowledgement holds while the finding's evidence (class, reason code, amounts) stays the
    same and --until has not passed; then the finding shows as reopened. Only unacknowledged
    findings fail the health check and the run's exit code.
    """
    if not reason.strip():
        print("ack: --reason is mandatory", file=sys.stderr)
        raise typer.Exit(ExitCode.FAILED)
    _acknowledge(
        AckAction.ACK,
        finding_or_invoice,
        reason=reason,
        by=by,
        until=until,
        tenant=tenant,
        reason_code=reason_code,
        yes=yes,
    )


@app.command(epilog=_environment_epilog(*_STATE_VARIABLES))
def unack(
    finding_or_invoice: Annotated[str, typer.Argument(help="A finding id or an invoice id.")],
    reason: Annotated[str, typer.Option(help="Why the acknowledgement is withdrawn.")] = "withdrawn",
    by: Annotated[str | None, typer.Option(help="Who withdraws it. Default: the OS user.")] = None,
) -> None:
    """Withdraw an acknowledgement: the finding needs a person again from the next check on."""
    _acknowledge(AckAction.UNACK, finding_or_invoice, reason=reason, by=by)


@app.command(epilog=_environment_epilog(*_STATE_VARIABLES, "finding_sla_days"))
def acks(
    show_all: Annotated[
        bool, typer.Option("--all", help="Every row ever recorded, lapsed and withdrawn ones too.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """The acknowledgements that hold now (or, with --all, the whole append-only record)."""
    now = datetime.now(UTC)
    try:
        settings = load_settings({})
        url = settings.state_url()
        if show_all:
            rows = acks_store.acknowledgements(url, now)
        else:
            rows = acks_store.holding(
                acks_store.findings_with_acks(url, now, sla_days=settings.finding_sla_days)
            )
    except ReconcileAuditError as exc:
        print(f"acks: {exc}", file=sys.stderr)
        raise typer.Exit(ExitCode.FAILED) from exc
    columns = (
        ["id", "finding_id", "action", "acked_by", "acked_at", "acked_until", "reason"]
        if show_all
        else ["finding_id", "tenant_id", "acked_by", "acked_at", "acked_until", "ack_reason", "reason"]
    )
    shown = rows.select(columns)
    if as_json:
        for row in shown.iter_rows(named=True):
            print(json.dumps(row, default=str, ensure_ascii=False))
        return
    if shown.is_empty():
        print("no acknowledgements" + (" recorded" if show_all else " hold now"))
        return
    print("  ".join(columns))
    for row in shown.iter_rows(named=True):
        print("  ".join("-" if value is None else str(value) for value in row.values()))


@app.command(epilog=_environment_epilog(*_STATE_VARIABLES))
def unlock(
    tenant: Annotated[str | None, typer.Option(help="The tenant whose lease to break.")] = None,
) -> None:
    """Break the run lease of a tenant scope on purpose (a holder that died on another host).

    A holder on this host whose process is gone, or whose heartbeat stopped, is taken over by the
    next run on its own; this is for the rest. It says whose lease it was.
    """
    scope = f"tenant {tenant!r}" if tenant else "all tenants"
    try:
        settings = load_settings({"tenant_id": tenant} if tenant else {})
        held = persist.break_lease(settings.state_url(), settings.tenant_id)
    except ReconcileAuditError as exc:
        print(f"unlock: {exc}", file=sys.stderr)
        raise typer.Exit(ExitCode.FAILED) from exc
    print(f"released the lease of {scope}, held by {held}" if held else f"no lease held for {scope}")


@app.command(epilog=_environment_epilog())
def check(
    as_json: Annotated[bool, typer.Option("--json", help="Print the checks as JSON.")] = False,
    tenant: Annotated[str | None, typer.Option(help="Check the extract for one tenant.")] = None,
) -> None:
    """Try the configuration without auditing: source, state database, RPC, SMTP, Pushgateway.

    One line per check; nothing is sent, pushed or written. Exit 0 when every configured part
    answers, 2 otherwise.
    """
    from reconcile_audit.face import check as checks

    try:
        settings = load_settings({"tenant_id": tenant} if tenant else {})
    except ReconcileAuditError as exc:
        print(f"check: {exc}", file=sys.stderr)
        raise typer.Exit(ExitCode.FAILED) from exc
    results = checks.run_checks(settings)
    if as_json:
        print(checks.to_json(results))
    else:
        for result in results:
            print(result.line())
    raise typer.Exit(checks.exit_code(results))


@app.command(epilog=_environment_epilog("database_url", "state_database_url"))
def migrate() -> None:
    """Create or update the tool's own tables in the state database (idempotent)."""
    try:
        settings = load_settings({})
        url = settings.state_url()
        persist.migrate(url)
    except ReconcileAuditError as exc:
        print(f"migrate: {exc}", file=sys.stderr)
        raise typer.Exit(ExitCode.FAILED) from exc
    print(f"migrated {redact_url(url)}")


@app.command()
def version() -> None:
    """Print the tool's version."""
    print(__version__)


_URL_PASSWORD = re.compile(r"(://[^:/@\s]+:)[^@\s]+@")


def main() -> None:
    """The console entry point: the app, with every unexpected crash turned into exit 2.

    Exit 1 means "completed with findings", and schedulers treat it as a result, so a traceback
    must never end with it. The cause is one line on stderr (a password in a URL masked); the
    traceback goes to the log (``--verbose`` shows it).
    """
    try:
        app()
    except Exception as exc:
        log.debug("unexpected failure", exc_info=True)
        cause = _URL_PASSWORD.sub(r"\1***@", " ".join(f"{type(exc).__name__}: {exc}".split()))
        print(f"reconcile-audit: failed: {cause}", file=sys.stderr)
        sys.exit(ExitCode.FAILED)


if __name__ == "__main__":  # pragma: no cover
    main()
