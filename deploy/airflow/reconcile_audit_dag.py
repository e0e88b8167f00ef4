"""Airflow: one night's escrow reconciliation audit in shards, then their merge.

Dynamic task mapping runs ``reconcile-audit run --shard I/N`` once per shard (each in its own
task, with its own lease), then ``reconcile-audit merge`` combines the stored shards into the
night's result: the report, the email, the metrics and the health the backend reads. The merge
runs whatever the shards did (``trigger_rule="all_done"``): a failed shard makes it
``incomplete``, which is reported, never hidden.

Every task uses the same run key, from the DAG run's logical date, so a night whose shards start
on both sides of midnight is still one run. Exit 1 means "completed with findings", a result,
so it is mapped to success; the findings reach people through the email and the alerts.

Configure the workers' environment as for ``reconcile-audit run`` (``DATABASE_URL``,
``SOROBAN_RPC_URL``, ``RECONCILE_STATE_DATABASE_URL``, SMTP and Pushgateway settings), with
``reconcile-audit`` installed. ``RECONCILE_SHARDS`` (default 4) sets how many shards.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

from airflow import DAG

try:  # Airflow 3
    from airflow.providers.standard.operators.bash import BashOperator
except ImportError:  # Airflow 2
    from airflow.operators.bash import BashOperator  # type: ignore[no-redef]

SHARDS = int(os.environ.get("RECONCILE_SHARDS", "4"))
RUN_KEY = "all:{{ ds }}"
# Findings (exit 1) are a result; 2 (failed, incomplete) and 3 (lease held) fail the task.
FINDINGS_ARE_A_RESULT = "; rc=$?; if [ $rc -eq 1 ]; then exit 0; fi; exit $rc"

with DAG(
    dag_id="reconcile_audit",
    description="Nightly escrow reconciliation audit, sharded",
    schedule="15 2 * * *",
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": timedelta(minutes=5), "execution_timeout": timedelta(hours=2)},
    tags=["reconciliation"],
) as dag:
    shards = BashOperator.partial(
        task_id="shard",
        bash_command=f'reconcile-audit run --run-key "{RUN_KEY}" --shard "$SHARD"{FINDINGS_ARE_A_RESULT}',
        append_env=True,
    ).expand(env=[{"SHARD": f"{index}/{SHARDS}"} for index in range(SHARDS)])

    merge = BashOperator(
        task_id="merge",
        bash_command=f'reconcile-audit merge --run-key "{RUN_KEY}" --shards {SHARDS}{FINDINGS_ARE_A_RESULT}',
        trigger_rule="all_done",
        retries=0,  # the shards' retries are done by now; a merge rerun by hand completes a night
    )

    shards >> merge
