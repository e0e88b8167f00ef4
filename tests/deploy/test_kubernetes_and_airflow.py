"""deploy/kubernetes and deploy/airflow: the shipped manifests and DAG run the shards and the
merge as README says, and the Kubernetes objects validate against the API's own schemas
(kubernetes-validate bundles them: offline)."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "deploy" / "kubernetes" / "indexed-job.yaml"
DAG = ROOT / "deploy" / "airflow" / "reconcile_audit_dag.py"
KUBERNETES_VERSION = "1.33.0"  # backoffLimitPerIndex is GA from 1.33


def rendered() -> list[dict]:
    """The manifest as `envsubst '${RUN_KEY} ${RUN_NAME}'` renders it for one night."""
    text = MANIFEST.read_text(encoding="utf-8")
    for name, value in (("RUN_KEY", "all:2026-11-29"), ("RUN_NAME", "20261129")):
        text = text.replace("${" + name + "}", value)
    return [document for document in yaml.safe_load_all(text) if document]


def container(job: dict) -> dict:
    (only,) = job["spec"]["template"]["spec"]["containers"]
    return only


def env(job: dict) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container(job).get("env", [])}


def test_both_jobs_validate_against_the_kubernetes_schema():
    documents = rendered()
    assert [document["kind"] for document in documents] == ["Job", "Job"]
    for document in documents:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_an_indexed_job_runs_each_shard_and_the_merge_waits_for_all_of_them():
    shards, merge = rendered()
    spec = shards["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"]
    count = spec["completions"]
    assert env(shards)["RECONCILE_SHARDS"] == str(count)
    assert '--shard "$JOB_COMPLETION_INDEX/$RECONCILE_SHARDS"' in " ".join(container(shards)["command"])
    merge_command = " ".join(container(merge)["command"])
    assert re.search(rf"merge --run-key \"\$RECONCILE_RUN_KEY\" --shards {count} --wait \d+", merge_command)
    # One run key for the night, fixed when rendered: never each pod's own UTC date.
    assert env(shards)["RECONCILE_RUN_KEY"] == env(merge)["RECONCILE_RUN_KEY"] == "all:2026-11-29"


@pytest.mark.parametrize(("exit_code", "job_exit"), [(0, 0), (1, 0), (2, 2), (3, 3)])
def test_the_pods_shell_maps_findings_to_success_and_keeps_failures(tmp_path, exit_code, job_exit):
    """The containers' own sh -c lines, with a stand-in `reconcile-audit` that exits as told and
    records its arguments: findings (1) are a result, 2 and 3 fail the pod."""
    stand_in = tmp_path / "reconcile-audit"
    stand_in.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/args\nexit {exit_code}\n')
    stand_in.chmod(0o755)
    for job in rendered():
        script = container(job)["command"][2]
        environment = {
            **os.environ,
            **env(job),
            "PATH": f"{tmp_path}:{os.environ['PATH']}",
            "JOB_COMPLETION_INDEX": "2",
        }
        done = subprocess.run(["sh", "-c", script], env=environment, timeout=30, check=False)
        assert done.returncode == job_exit
        args = (tmp_path / "args").read_text()
        assert args.startswith("merge --run-key all:2026-11-29 --shards 4") or args.startswith(
            "run --shard 2/4"
        )


def test_the_airflow_dag_maps_one_task_per_shard_then_merges_whatever_they_did():
    """Structure, read with ast: the DAG file needs Airflow to import, which the suite does not
    install (README says how it was imported with Airflow itself)."""
    tree = ast.parse(DAG.read_text(encoding="utf-8"))
    calls = {
        node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", ""): node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
    }
    assert "expand" in calls and "partial" in calls  # dynamic task mapping over the shards
    source = ast.unparse(tree)
    assert 'reconcile-audit run --run-key "{RUN_KEY}" --shard "$SHARD"' in source
    assert 'reconcile-audit merge --run-key "{RUN_KEY}" --shards {SHARDS}' in source
    merge_keywords = {keyword.arg: ast.unparse(keyword.value) for keyword in calls["BashOperator"].keywords}
    assert merge_keywords["trigger_rule"] == "'all_done'"
    assert "shards >> merge" in source
    assert "RUN_KEY = 'all:{{ ds }}'" in source  # one key per DAG run, from its logical date


AIRFLOW_VERSION = "3.3.2"
AIRFLOW_VENV = ROOT / "build" / f"airflow-{AIRFLOW_VERSION}"
DAG_PROBE = """
import json
from airflow.models import DagBag
bag = DagBag(dag_folder={folder!r})
dag = bag.dags.get("reconcile_audit")
shard, merge = (dag.get_task("shard"), dag.get_task("merge")) if dag else (None, None)
print(json.dumps({{
    "errors": {{str(k): str(v) for k, v in bag.import_errors.items()}},
    "tasks": sorted(t.task_id for t in dag.tasks) if dag else None,
    "shard_mapped": type(shard).__name__ if shard else None,
    "shard_env": shard.expand_input.value["env"] if shard else None,
    "merge_upstream": sorted(merge.upstream_task_ids) if merge else None,
    "merge_trigger_rule": getattr(merge.trigger_rule, "value", str(merge.trigger_rule)) if merge else None,
}}))
"""


@pytest.mark.slow
def test_the_airflow_dag_imports_in_airflow_itself(tmp_path):
    """Airflow in a throwaway environment of its own (about two minutes the first time, then
    kept in build/): its DagBag loads the DAG without an import error, as the scheduler would."""
    python = AIRFLOW_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run(["python3", "-m", "venv", str(AIRFLOW_VENV)], check=True, timeout=120)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", f"apache-airflow=={AIRFLOW_VERSION}"],
            check=True,
            timeout=900,
        )
    probe = subprocess.run(
        [str(python), "-c", DAG_PROBE.format(folder=str(DAG.parent))],
        env={"PATH": os.environ["PATH"], "AIRFLOW_HOME": str(tmp_path), "RECONCILE_SHARDS": "4"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    found = json.loads(probe.stdout.strip().splitlines()[-1])
    assert found["errors"] == {}
    assert found["tasks"] == ["merge", "shard"]
    assert found["shard_mapped"] == "MappedOperator"
    assert found["shard_env"] == [{"SHARD": f"{index}/4"} for index in range(4)]
    assert found["merge_upstream"] == ["shard"] and found["merge_trigger_rule"] == "all_done"
