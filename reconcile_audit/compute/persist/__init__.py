"""Persist: the tool's own tables, its run attempts, each run key's result and its non-match
findings, the per-tenant lease, and the health read-back. Works on PostgreSQL (ADBC) and on an
embedded DuckDB file alike.

Tables (``reconcile_audit/sql/migrations/<dialect>/``, applied by :func:`migrate`):

- ``reconciliation_attempts``: one row per execution (the runner's run id): running, then
  completed, incomplete, failed or abandoned. The health check reads it in the database's order
  of writes; the mismatch counter sums, per run key, the most any finished attempt found.
- ``reconciliation_runs``: one row per ``run_key`` (unique), the key's result. Only a later
  *completed* attempt replaces a completed one. ``results`` is a capped JSON digest of the
  non-match rows, never the whole list: ``{"cap", "non_match", "omitted", "order", "rows"}`` with
  at most :data:`RESULTS_JSON_CAP` rows, worst first (largest drift, then by class). The complete
  list is ``reconciliation_findings``.
- ``reconciliation_findings``: one row per non-match invoice of a run key's result (and per
  match that carries a flag, and per stranded escrow, after them), keyed by
  ``(run_id, finding_no)`` where ``finding_no`` is the row's 1-based position in the run's
  findings frame (``results.parquet``); indexed by invoice id (its md5 on PostgreSQL) and run.
- ``reconciliation_leases``: one row per tenant scope while a run holds it (a shard is a scope
  of its own).

A sharded run (``run --shard I/N``) stores each shard's result as a row of its own, keyed
``<run key>#shard-I-of-N`` with ``shard_of`` the run key; ``merge`` (``shards`` reads them back)
then stores the key's own row. History, health and the counter read rows with ``shard_of`` null.

An attempt whose findings cannot be stored is recorded as ``failed`` with its counts kept
(``PersistOutcome.marked_failed``), so :func:`cumulative_mismatches` already includes them.

The tenant scope: ``tenant_id=None`` is the all-tenants run, a scope of its own. Health,
cumulative counts, leases and history always compare a run with runs of the same scope.

The lease is a row, not a PostgreSQL advisory lock, so that it behaves the same on both
dialects and needs no connection held for the whole run: the runner takes it and a Jupyter
kernel in another process then opens the same DuckDB file, which DuckDB allows only after the
runner's connection is closed. A heartbeat keeps it; a holder that dies frees it within minutes.

Modules, one job each: ``session`` (connections, transactions), ``migrate``, ``runs`` (attempts
and results), ``findings`` (the findings table and the results digest), ``lease`` and
``health``. This package exports what the other stages call.
"""

from reconcile_audit.compute.persist.findings import (
    RESULTS_COLUMNS,
    RESULTS_JSON_CAP,
    non_match_rows,
    results_digest,
)
from reconcile_audit.compute.persist.health import AttemptView, Health, latest_summary
from reconcile_audit.compute.persist.lease import Lease, break_lease, holder_name, run_lease
from reconcile_audit.compute.persist.migrate import check_state, migrate
from reconcile_audit.compute.persist.runs import (
    PersistOutcome,
    RunRecord,
    abandon_stale_attempts,
    cumulative_mismatches,
    persist_run,
    start_run,
)
from reconcile_audit.compute.persist.session import ping, state_database_missing

__all__ = [
    "RESULTS_COLUMNS",
    "RESULTS_JSON_CAP",
    "AttemptView",
    "Health",
    "Lease",
    "PersistOutcome",
    "RunRecord",
    "abandon_stale_attempts",
    "break_lease",
    "check_state",
    "cumulative_mismatches",
    "holder_name",
    "latest_summary",
    "migrate",
    "non_match_rows",
    "persist_run",
    "ping",
    "results_digest",
    "run_lease",
    "start_run",
    "state_database_missing",
]
