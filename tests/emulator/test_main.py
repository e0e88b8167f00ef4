"""``python -m reconcile_audit.emulator`` serves the seeded synthetic state from a process of its own."""

from __future__ import annotations

import subprocess
import sys

import requests
from stellar_sdk import SorobanServer
from stellar_sdk import xdr as stellar_xdr

from reconcile_audit.emulator import escrow_instance_entry, instance_key, synthetic_state


def test_module_serves_the_seeded_state() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "reconcile_audit.emulator", "--escrows", "40", "--seed", "9", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        expected = synthetic_state(40, seed=9)
        with SorobanServer(url) as client:
            assert client.get_health().status == "healthy"
            entries = client.get_ledger_entries(
                [instance_key(s.contract_id) for s in expected.escrows]
            ).entries
        assert entries is not None
        assert [stellar_xdr.LedgerEntryData.from_xdr(e.xdr) for e in entries] == [
            escrow_instance_entry(s) for s in expected.escrows
        ]
    finally:
        process.terminate()
        process.wait(timeout=30)
        if process.stdout is not None:
            process.stdout.close()
    assert process.returncode is not None


def test_module_rejects_an_unknown_fault_kind() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "reconcile_audit.emulator", "--fault-rate", "0.5", "--fault-kind", "meteor"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "meteor" in result.stderr


def test_module_with_faults_injects_them() -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "reconcile_audit.emulator",
            "--escrows",
            "5",
            "--fault-rate",
            "1",
            "--fault-kind",
            "http_503",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        key = instance_key(synthetic_state(5).escrows[0].contract_id).to_xdr()
        body = {"jsonrpc": "2.0", "id": 1, "method": "getLedgerEntries", "params": {"keys": [key]}}
        assert requests.post(url, json=body, timeout=10).status_code == 503
    finally:
        process.terminate()
        process.wait(timeout=30)
        if process.stdout is not None:
            process.stdout.close()
