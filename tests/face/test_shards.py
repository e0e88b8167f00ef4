"""Shards: `run --shard I/N` as parallel processes against one PostgreSQL and one emulator, then
`merge`, give exactly what one unsharded run gives: the findings, the counts, the report's
totals, the flagged matches and the stranded escrows; history and health see one run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import polars as pl
import pytest

from reconcile_audit.compute.persist import RESULTS_COLUMNS
from reconcile_audit.compute.settings import Shard
from reconcile_audit.compute.sharding import in_shard, shard_indexes
from reconcile_audit.emulator.server import Emulator
from reconcile_audit.face import demo
from tests.services import admin_execute

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

SCRIPT = Path(sys.executable).with_name("reconcile-audit")
RUN_KEY = "all:2026-11-29"
SHARDS = 4
# What a finding is, whichever run found it (the stored digest's columns, with the drift rank);
# history columns (first seen, age) are the run's own.
FINDING_COLUMNS = [name for name in RESULTS_COLUMNS if name != "finding_no"] + ["drift_rank"]


@pytest.fixture(scope="module")
def dataset() -> demo.DemoData:
    return demo.build_dataset(160, history_nights=0)


@pytest.fixture(scope="module")
def databases(pg_server: str, dataset: demo.DemoData) -> Iterator[dict[str, str]]:
    """The source (which also keeps the single run's state), and the sharded runs' state."""
    base = pg_server.rsplit("/", 1)[0]
    names = {role: f"reconcile_shards_{role}_{uuid.uuid4().hex[:8]}" for role in ("source", "state")}
    for name in names.values():
        admin_execute(f'CREATE DATABASE "{name}"')
    urls = {role: f"{base}/{name}" for role, name in names.items()}
    demo.write_source_database(urls["source"], dataset)
    try:
        yield urls
    finally:
        for name in names.values():
            admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def command(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    environment = {
        **{
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("RECONCILE_", "SMTP_", "ALERT_", "PUSHGATEWAY"))
        },
        **env,
    }
    return subprocess.Popen(
        [str(SCRIPT), *args], env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finished(process: subprocess.Popen[str]) -> tuple[int, str]:
    out, err = process.communicate(timeout=600)
    return process.returncode, out + err


def only_folder(out: Path) -> Path:
    (folder,) = [path for path in out.iterdir() if path.is_dir()]
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory, databases, dataset: demo.DemoData) -> Iterator[dict[str, object]]:
    """One unsharded run, then four shards at once and their merge. Each against an emulator of
    its own: the demo's escrows that change while a run reads them change once per emulator."""
    with Emulator(dataset.ledger_state(0)) as first, Emulator(dataset.ledger_state(0)) as second:
        yield _runs(tmp_path_factory, databases, dataset, first.url, second.url)


def _runs(
    tmp_path_factory, databases, dataset: demo.DemoData, single_rpc: str, sharded_rpc: str
) -> dict[str, object]:
    env = {
        "DATABASE_URL": databases["source"],
        "SOROBAN_RPC_URL": single_rpc,
        "ESCROW_ADDR_BY_INVOICE": dataset.escrow_addr_by_invoice,
    }
    single_out = tmp_path_factory.mktemp("single")
    single_code, single_log = finished(
        command(["run", "--run-key", RUN_KEY, "--output-dir", str(single_out), "--no-deliver"], env)
    )
    sharded_env = {**env, "SOROBAN_RPC_URL": sharded_rpc, "RECONCILE_STATE_DATABASE_URL": databases["state"]}
    shard_outs = [tmp_path_factory.mktemp(f"shard{index}") for index in range(SHARDS)]
    processes = [
        command(
            [
                "run",
                "--run-key",
                RUN_KEY,
                "--shard",
                f"{index}/{SHARDS}",
                "--output-dir",
                str(out),
                "--no-deliver",
            ],
            sharded_env,
        )
        for index, out in enumerate(shard_outs)
    ]
    shard_results = [finished(process) for process in processes]
    merge_out = tmp_path_factory.mktemp("merged")
    merge_code, merge_log = finished(
        command(["merge", "--run-key", RUN_KEY, "--output-dir", str(merge_out), "--no-deliver"], sharded_env)
    )
    health_code, health_out = finished(command(["summary", "--json"], sharded_env))
    return {
        "health": (health_code, json.loads(health_out[health_out.index("{") :])),
        "single": (single_code, single_log, only_folder(single_out)),
        "shards": [
            (code, log, only_folder(out)) for (code, log), out in zip(shard_results, shard_outs, strict=True)
        ],
        "merged": (merge_code, merge_log, only_folder(merge_out)),
        "env": sharded_env,
    }


def summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text(encoding="utf-8"))


def findings(folder: Path) -> pl.DataFrame:
    frame = pl.read_parquet(folder / "results.parquet")
    return frame.filter(pl.col("class") != "match").select(FINDING_COLUMNS).sort("invoice_id")


def test_every_invoice_is_in_exactly_one_shard_by_a_fixed_hash(dataset):
    ids = dataset.invoices.select(pl.col("invoice_id").cast(pl.String))
    parts = [in_shard(ids, Shard(index, SHARDS)) for index in range(SHARDS)]
    assert sum(part.height for part in parts) == ids.height
    assert pl.concat(parts).sort("invoice_id").equals(ids.sort("invoice_id"))
    assert all(part.height for part in parts)  # 160 ids spread over all four
    # CRC-32 of the UTF-8 bytes, the documented rule: zlib's value for these ids, and None in 0.
    expected = [zlib.crc32(b"INV-1") % 4, zlib.crc32("INV-é".encode()) % 4, 0]
    assert shard_indexes(pl.Series(["INV-1", "INV-é", None]), 4).to_list() == expected


def test_shard_text_is_checked():
    assert Shard.parse(" 2 / 4 ") == Shard(2, 4) and str(Shard(2, 4)) == "2/4"
    for bad in ("4/4", "-1/4", "1", "a/b", "0/0"):
        with pytest.raises(ValueError):
            Shard.parse(bad)


def test_four_parallel_shards_merged_equal_one_unsharded_run(runs):
    single_code, single_log, single = runs["single"]
    merge_code, merge_log, merged = runs["merged"]
    for code, log, _folder in runs["shards"]:
        assert code == 1, log  # each shard of the demo holds findings
    assert single_code == merge_code == 1, (single_log, merge_log)
    one, whole = summary(single), summary(merged)
    assert whole["status"] == one["status"] == "findings"
    assert whole["counts"] == one["counts"] and whole["total"] == one["total"]
    assert sum(summary(folder)["total"] for _c, _l, folder in runs["shards"]) == one["total"]
    assert whole["stranded"] == one["stranded"] and one["stranded"]
    assert whole["ledger_min"] is not None
    # The findings, drift ranks over the whole run included, and the flagged matches.
    assert findings(merged).equals(findings(single))
    flagged = pl.col("flags").list.len() > 0
    single_flagged = (
        pl.read_parquet(single / "results.parquet").filter(flagged).select(FINDING_COLUMNS).sort("invoice_id")
    )
    merged_flagged = (
        pl.read_parquet(merged / "results.parquet").filter(flagged).select(FINDING_COLUMNS).sort("invoice_id")
    )
    assert merged_flagged.height and merged_flagged.equals(single_flagged)
    stranded = [
        pl.read_parquet(folder / "stranded.parquet").drop("latest_ledger").sort("contract_id")
        for folder in (single, merged)
    ]
    assert stranded[0].equals(stranded[1])
    # The report's totals: its headline and every count line are the same sentences.
    report_one, report_whole = (
        (folder / "report.txt").read_text(encoding="utf-8") for folder in (single, merged)
    )
    headline = next(line for line in report_one.splitlines() if "need attention" in line)
    assert headline in report_whole
    # Each report says what part of the night it is.
    assert f"merged from {SHARDS} shards of run key {RUN_KEY}" in report_whole
    _code, _log, shard_two = runs["shards"][2]
    assert f"shard 2/{SHARDS} of run key {RUN_KEY}" in (shard_two / "report.txt").read_text(encoding="utf-8")
    assert (merged / "findings.csv").read_text(encoding="utf-8").count("\n") == (
        single / "findings.csv"
    ).read_text(encoding="utf-8").count("\n")


def test_health_sees_the_merge_not_the_shards(runs):
    code, health = runs["health"]  # read right after the merge
    assert health["latest"]["run_key"] == RUN_KEY
    assert health["latest"]["total"] == summary(runs["single"][2])["total"]
    assert code == 1  # findings


def test_a_merge_with_a_missing_shard_is_incomplete_never_clean(runs, tmp_path):
    code, log = finished(
        command(
            ["merge", "--run-key", "all:never-sharded", "--output-dir", str(tmp_path), "--no-deliver"],
            runs["env"],
        )
    )
    assert code == 2, log
    assert summary(only_folder(tmp_path))["status"] == "incomplete"
    code, log = finished(
        command(
            [
                "merge",
                "--run-key",
                RUN_KEY,
                "--shards",
                "5",
                "--output-dir",
                str(tmp_path / "five"),
                "--no-deliver",
            ],
            runs["env"],
        )
    )
    assert code == 2 and "shard 4/5 has stored no result" in log, log


def test_the_merge_waits_for_every_shard_then_stops_waiting(state_url, tmp_path):
    """``--wait`` polls the run rows until all N shards stored a result, and gives up at its end."""
    from reconcile_audit.face.merge import MergeRequest, wait_for_shards
    from tests.compute.test_merge import KEY, SHARD_0, SHARD_1, shard_result, store

    request = MergeRequest(
        run_key=KEY, shard_count=2, output_dir=tmp_path, wait_seconds=0.6, poll_seconds=0.2
    )
    store(state_url, Shard(0, 2), shard_result(SHARD_0))
    assert wait_for_shards(state_url, request) == 1  # the wait ran out: the merge says which is missing
    store(state_url, Shard(1, 2), shard_result(SHARD_1))
    assert wait_for_shards(state_url, replace(request, wait_seconds=3600)) == 2  # at once, not after an hour
