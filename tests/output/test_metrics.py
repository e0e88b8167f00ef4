from __future__ import annotations

import base64
import subprocess
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from reconcile_audit.compute.schemas import CLASSES, AuditStatus
from reconcile_audit.output.metrics import (
    JOB,
    MISMATCHES_HELP,
    RunMetricsInput,
    build_registry,
    push,
    write_textfile,
    write_textfile_dir,
)
from tests.services import free_port, require_binary, running_pushgateway

PREFIX = "escrow_reconciliation_"
ALL = (("tenant", "all"),)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Exposition text -> {(sample name, sorted labels): value}."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def success_run(**values: object) -> RunMetricsInput:
    base: dict[str, object] = {
        "success": True,
        "finished_at_epoch": 1_795_000_000.0,
        "duration_seconds": 74.25,
        "cumulative_mismatches": 12,
        "class_counts": {"match": 42, "mismatch": 3, "error": 1},
        "stage_seconds": {"extract": 1.5, "ledger": 60.0, "classify": 0.25},
        "email_bytes": 48_213,
        "status": AuditStatus.FINDINGS,
    }
    base.update(values)
    return RunMetricsInput(**base)  # type: ignore[arg-type]


def failed_run(**values: object) -> RunMetricsInput:
    base: dict[str, object] = {
        "success": False,
        "finished_at_epoch": 1_795_086_400.0,
        "duration_seconds": 3.0,
        "cumulative_mismatches": None,
        "class_counts": None,
        "status": AuditStatus.FAILED,
    }
    base.update(values)
    return RunMetricsInput(**base)  # type: ignore[arg-type]


def test_registry_holds_the_seeds_counter_and_the_batch_gauges() -> None:
    text = generate_latest(build_registry(success_run())).decode()
    assert f"# HELP {PREFIX}mismatches_total {MISMATCHES_HELP}" in text
    assert f"# TYPE {PREFIX}mismatches_total counter" in text
    assert "_created" not in text  # a batch job would report a new creation time every run
    found = samples(text)
    assert found[(f"{PREFIX}mismatches_total", ALL)] == 12
    assert found[(f"{PREFIX}last_success_timestamp_seconds", ALL)] == 1_795_000_000.0
    assert found[(f"{PREFIX}last_run_timestamp_seconds", ALL)] == 1_795_000_000.0
    assert found[(f"{PREFIX}last_run_success", ALL)] == 1
    assert found[(f"{PREFIX}run_duration_seconds", ALL)] == 74.25
    assert found[(f"{PREFIX}stage_duration_seconds", (("stage", "ledger"), *ALL))] == 60.0
    assert found[(f"{PREFIX}email_bytes", ALL)] == 48_213
    assert found[(f"{PREFIX}email_failures", ALL)] == 0
    statuses = {
        dict(labels)["status"]: v for (name, labels), v in found.items() if name == f"{PREFIX}last_run_status"
    }
    assert statuses == {"clean": 0, "findings": 1, "incomplete": 0, "failed": 0}
    assert all(dict(labels)["tenant"] == "all" for _, labels in found)
    per_class = {
        dict(labels)["class"]: v for (name, labels), v in found.items() if name == f"{PREFIX}invoices"
    }
    assert per_class == {"match": 42, "mismatch": 3, "missing_on_chain": 0, "unlinked": 0, "error": 1}
    assert all(name.startswith(PREFIX) for name, _ in found)


def test_every_class_is_pre_initialised_to_zero() -> None:
    found = samples(generate_latest(build_registry(success_run(class_counts={}))).decode())
    per_class = {
        dict(labels)["class"]: v for (name, labels), v in found.items() if name == f"{PREFIX}invoices"
    }
    assert per_class == dict.fromkeys(CLASSES, 0)


def test_a_failed_run_leaves_out_what_it_does_not_know() -> None:
    found = samples(generate_latest(build_registry(failed_run(email_failed=True))).decode())
    names = {name for name, _ in found}
    assert f"{PREFIX}last_success_timestamp_seconds" not in names
    assert f"{PREFIX}mismatches_total" not in names
    assert f"{PREFIX}invoices" not in names
    assert found[(f"{PREFIX}last_run_success", ALL)] == 0
    assert found[(f"{PREFIX}email_failures", ALL)] == 1
    assert found[(f"{PREFIX}last_run_status", (("status", "failed"), *ALL))] == 1


def test_input_is_validated_and_frozen() -> None:
    with pytest.raises(ValueError, match="unknown classes"):
        success_run(class_counts={"matched": 1})
    with pytest.raises(ValueError, match="negative"):
        success_run(cumulative_mismatches=-1)
    counts = {"match": 1}
    run = success_run(class_counts=counts)
    counts["match"] = 99
    assert run.class_counts == {"match": 1}


def test_promtool_accepts_the_textfile(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    path = write_textfile(build_registry(success_run()), tmp_path / "run" / "metrics.prom")
    for text in (path.read_text(), generate_latest(build_registry(failed_run())).decode()):
        checked = subprocess.run(
            [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr


def test_textfile_dir_is_written_atomically_one_file_per_tenant(tmp_path: Path) -> None:
    path = write_textfile_dir(build_registry(success_run()), tmp_path, "all")
    assert path == tmp_path / "escrow_reconciliation_all.prom"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind
    assert samples(path.read_text())[(f"{PREFIX}mismatches_total", ALL)] == 12
    acme = write_textfile_dir(build_registry(success_run(tenant="acme")), tmp_path, "acme")
    odd = write_textfile_dir(build_registry(success_run(tenant="../x y")), tmp_path, "../x y")
    assert acme.name == "escrow_reconciliation_acme.prom"
    assert (
        odd.parent == tmp_path and odd.name.startswith("escrow_reconciliation_") and "/" not in odd.name[:-5]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, acme.name, odd.name])
    assert samples(path.read_text())[(f"{PREFIX}mismatches_total", ALL)] == 12  # acme's run left it alone


@pytest.fixture
def pushgateway() -> Iterator[str]:
    with running_pushgateway() as url:
        yield url


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Our samples on the gateway. An empty label is an absent label in Prometheus: the gateway
    shows ``instance=""`` for a group pushed without one, so empty labels are dropped here."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (name, tuple((k, v) for k, v in labels if v)): value
        for (name, labels), value in samples(text).items()
        if name.startswith(PREFIX)
    }


@pytest.mark.slow
def test_pushgateway_keeps_the_counter_monotonic_and_the_last_success(pushgateway: str) -> None:
    group = (("job", JOB), ("tenant", "all"))
    key = (f"{PREFIX}mismatches_total", group)
    success_key = (f"{PREFIX}last_success_timestamp_seconds", group)

    assert (
        push(build_registry(success_run(cumulative_mismatches=12)), pushgateway, tenant="all").status
        == "pushed"
    )
    first = scrape(pushgateway)
    assert first[key] == 12
    assert all("instance" not in dict(labels) for _, labels in first)

    later = success_run(cumulative_mismatches=15, finished_at_epoch=1_795_086_400.0)
    assert push(build_registry(later), pushgateway, tenant="all").status == "pushed"
    second = scrape(pushgateway)
    assert second[key] == 15 >= first[key]
    assert second[success_key] == 1_795_086_400.0

    failure = failed_run(finished_at_epoch=1_795_172_800.0)
    assert push(build_registry(failure), pushgateway, tenant="all").status == "pushed"
    third = scrape(pushgateway)
    assert third[success_key] == 1_795_086_400.0  # kept from the last successful run
    assert third[(f"{PREFIX}last_run_success", group)] == 0
    assert third[(f"{PREFIX}last_run_timestamp_seconds", group)] == 1_795_172_800.0
    assert third[key] == 15  # the failed run did not know the history: the counter stays
    assert third[(f"{PREFIX}invoices", (("class", "mismatch"), *group))] == 3


@pytest.mark.slow
def test_each_tenants_series_survive_the_other_tenants_pushes(pushgateway: str) -> None:
    """The issue's case: `run --tenant acme`, then a failed `run --tenant globex`, once left
    last_run_success 0 and mismatches_total 0 (it was 3) for everyone on the gateway."""
    acme = success_run(tenant="acme", cumulative_mismatches=3, class_counts={"match": 7, "mismatch": 3})
    assert push(build_registry(acme), pushgateway, tenant="acme").status == "pushed"
    globex = failed_run(tenant="globex", status=AuditStatus.FAILED)
    assert push(build_registry(globex), pushgateway, tenant="globex").status == "pushed"
    found = scrape(pushgateway)
    acme_group = (("job", JOB), ("tenant", "acme"))
    globex_group = (("job", JOB), ("tenant", "globex"))
    assert found[(f"{PREFIX}mismatches_total", acme_group)] == 3
    assert found[(f"{PREFIX}last_run_success", acme_group)] == 1
    assert found[(f"{PREFIX}invoices", (("class", "mismatch"), *acme_group))] == 3
    assert found[(f"{PREFIX}last_run_success", globex_group)] == 0
    assert (
        found[(f"{PREFIX}last_run_status", (("job", JOB), ("status", "failed"), ("tenant", "globex")))] == 1
    )
    # Pushed in the other order, the same holds.
    assert push(build_registry(acme), pushgateway, tenant="acme").status == "pushed"
    again = scrape(pushgateway)
    assert again[(f"{PREFIX}last_run_success", globex_group)] == 0
    assert again[(f"{PREFIX}last_run_success", acme_group)] == 1


def test_a_push_failure_is_returned_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    outcome = push(
        build_registry(success_run()), f"http://127.0.0.1:{free_port()}", tenant="all", timeout_seconds=2
    )
    assert outcome.status == "failed" and outcome.detail
    assert "Pushgateway failed" in caplog.text
    assert push(build_registry(success_run()), None, tenant="all").status == "skipped"


def test_basic_auth_credentials_in_the_url_push_and_never_show(tmp_path):
    password = "gw-Pa55-e8c1d0"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # crypt: the stdlib's bcrypt, for the test only
        import crypt

        hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))
    config = tmp_path / "web.yml"
    config.write_text(f"basic_auth_users:\n  audit: '{hashed}'\n", encoding="utf-8")
    with running_pushgateway(web_config=config) as url:
        host = url.split("://", 1)[1]
        assert (
            push(build_registry(success_run()), f"http://audit:{password}@{host}", tenant="all").status
            == "pushed"
        )
        wrong = push(build_registry(success_run()), f"http://audit:not-{password}@{host}", tenant="all")
        assert wrong.status == "failed" and "401" in wrong.detail and password not in wrong.detail
        assert push(build_registry(success_run()), url, tenant="all").status == "failed"  # auth is required
        token = base64.b64encode(f"audit:{password}".encode()).decode()
        request = urllib.request.Request(f"{url}/metrics", headers={"Authorization": f"Basic {token}"})
        with urllib.request.urlopen(request, timeout=5) as response:
            assert "escrow_reconciliation_last_run_success" in response.read().decode()


def test_open_findings_by_age_and_state_only_when_the_run_could_age_them() -> None:
    by_age = {("0-1", "new"): 2, ("8-30", "persisting"): 1, ("over-30", "acknowledged"): 4}
    aged = success_run(findings_by_age=by_age, unacknowledged=3)
    found = samples(generate_latest(build_registry(aged)).decode())
    series = {
        (dict(labels)["bucket"], dict(labels)["state"]): v
        for (name, labels), v in found.items()
        if name == f"{PREFIX}findings"
    }
    assert series == by_age
    assert found[(f"{PREFIX}unacknowledged_findings", (("tenant", "all"),))] == 3
    unaged = samples(generate_latest(build_registry(success_run())).decode())
    assert not any(name in (f"{PREFIX}findings", f"{PREFIX}unacknowledged_findings") for name, _ in unaged)


def test_stranded_escrows_only_when_the_run_checked_them() -> None:
    found = samples(generate_latest(build_registry(success_run(stranded=3))).decode())
    assert found[(f"{PREFIX}stranded_escrows", (("tenant", "all"),))] == 3
    unchecked = samples(generate_latest(build_registry(success_run())).decode())
    assert not any(name == f"{PREFIX}stranded_escrows" for name, _ in unchecked)
