"""``reconcile-audit merge``: a sharded run key's whole result, from its shards' stored results.

Each ``run --shard I/N`` stores its part under the run key (``<key>#shard-I-of-N``) and delivers
nothing. The merge, once they are done, does what the notebook's later cells do for a whole run,
on the combined result: history, persist (the key's row, as an unsharded run stores it), report,
artifacts, email and metrics. A missing or failed shard makes the merge ``incomplete`` (exit 2),
never a clean result; running it again after the shard is rerun completes it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from reconcile_audit.compute import history, persist
from reconcile_audit.compute.merge import merge_shards
from reconcile_audit.compute.persist.shards import read_shards
from reconcile_audit.compute.settings import load_settings
from reconcile_audit.errors import (
    ConfigError,
    ExitCode,
    LeaseHeldError,
    ReconcileAuditError,
    StateLockedError,
)
from reconcile_audit.face.run import RunContext, new_run_id
from reconcile_audit.face.runner import RunOutcome, completed_outcome, prune_run_folders, scrub_secrets
from reconcile_audit.resources import default_output_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MergeRequest:
    """What one ``reconcile-audit merge`` was asked to do; the other settings come from the
    environment, as for a run."""

    run_key: str
    tenant_id: str | None = None
    shard_count: int | None = None  # None: the count of the shard stored last
    output_dir: Path = field(default_factory=default_output_dir)
    deliver: bool = True
    # Wait up to this long for every shard to store its result before merging (needs
    # shard_count): a scheduler may start the merge with the shards.
    wait_seconds: float = 0.0
    poll_seconds: float = 10.0


def wait_for_shards(url: str, request: MergeRequest) -> int:
    """Poll until all ``request.shard_count`` shards of the key stored a result, or the wait ends;
    return how many have. The merge then says what is missing, if anything still is."""
    assert request.shard_count is not None
    deadline = time.monotonic() + request.wait_seconds
    while True:
        stored = {
            shard.index
            for shard in read_shards(url, request.run_key, request.tenant_id, with_rows=False)
            if shard.count == request.shard_count
        }
        if len(stored) == request.shard_count or time.monotonic() >= deadline:
            return len(stored)
        log.info("waiting for shards: %d of %d stored", len(stored), request.shard_count)
        time.sleep(min(request.poll_seconds, max(0.0, deadline - time.monotonic())))


def merge(request: MergeRequest) -> RunOutcome:
    """Merge the stored shards of ``request.run_key``. Never raises a ReconcileAuditError."""
    parameters = {"run_key": request.run_key, "tenant_id": request.tenant_id or ""}
    output_dir = request.output_dir.resolve()
    run_id = new_run_id(datetime.now(UTC))
    run_dir = output_dir / run_id
    try:
        settings = load_settings(parameters)
        if settings.shard is not None:
            raise ConfigError("RECONCILE_SHARD", "is set; a merge is of the whole run key, unset it")
        state_url = settings.state_url()
        if request.wait_seconds and request.shard_count is None:
            raise ConfigError("--wait", "needs --shards: how many shards to wait for")
    except ConfigError as exc:
        return RunOutcome(ExitCode.FAILED, f"configuration: {exc}")
    try:
        if request.wait_seconds:
            wait_for_shards(state_url, request)
        with persist.run_lease(state_url, settings.tenant_id, persist.holder_name(run_id)):
            # Under the scope's lease, as a whole run: no other attempt of the key runs meanwhile.
            context = RunContext.start(parameters, run_id=run_id, output_dir=run_dir)
            persist.abandon_stale_attempts(state_url, settings.tenant_id, run_id)
            with context.stage("merge"):
                shards = read_shards(context.state_url, context.run_key, settings.tenant_id)
                result = merge_shards(shards, shard_count=request.shard_count)
            log.info(
                "merge of %s: %d shards, %d invoices%s",
                context.run_key,
                result.merged_shards,
                result.counts.total,
                f"; incomplete: {result.incomplete}" if result.incomplete else "",
                extra={"console": True},
            )
            with context.stage("history"):
                comparison = history.compare_with_history(
                    result, settings, run_key=context.run_key, now=context.started_at
                )
            with context.stage("persist"):
                persisted = context.persist(result, comparison)
            with context.stage("render"):
                facts, rendered = context.render(result, comparison, persisted)
            with context.stage("deliver"):
                context.deliver(
                    result,
                    report=rendered,
                    facts=facts,
                    persisted=persisted,
                    comparison=comparison,
                    send=request.deliver,
                )
    except (LeaseHeldError, StateLockedError) as exc:
        return RunOutcome(ExitCode.LEASE_HELD, str(exc), run_id=run_id, run_dir=run_dir)
    except ReconcileAuditError as exc:
        # The state database refused: the merge is recorded as failed where it still can be.
        failed = RunContext.create(settings, run_id=run_id, run_key=request.run_key, out_dir=run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        summary = failed.record_failure(str(exc), send=request.deliver)
        return RunOutcome(ExitCode.FAILED, settings.redact(str(exc)), run_id, run_dir, summary=summary)
    finally:
        if run_dir.exists():
            scrub_secrets(run_dir, settings.secrets)
        prune_run_folders(output_dir, keep=settings.keep_runs, current=run_id)
    return completed_outcome(run_id, run_dir)
