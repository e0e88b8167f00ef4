"""``python -m reconcile_audit.emulator`` serves the seeded synthetic state from a process of its own."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import requests
from stellar_sdk import SorobanServer, scval
from stellar_sdk import xdr as stellar_xdr

from reconcile_audit.emulator import escrow_instance_entry, instance_key, synthetic_state


@contextmanager
def _serving(*args: str) -> Iterator[str]:
    """``python -m reconcile_audit.emulator ARGS`` running; yields the URL it announces."""
    process = subprocess.Popen(
        [sys.executable, "-m", "reconcile_audit.emulator", *args], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        yield process.stdout.readline().strip()
    finally:
        process.terminate()
        process.wait(timeout=30)
        if process.stdout is not None:
            process.stdout.close()
    assert process.returncode is not None


def test_module_serves_the_seeded_state() -> None:
    with _serving("--escrows", "40", "--seed", "9", "--port", "0") as url:
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
    with _serving("--escrows", "5", "--fault-rate", "1", "--fault-kind", "http_503") as url:
        key = instance_key(synthetic_state(5).escrows[0].contract_id).to_xdr()
        body = {"jsonrpc": "2.0", "id": 1, "method": "getLedgerEntries", "params": {"keys": [key]}}
        assert requests.post(url, json=body, timeout=10).status_code == 503


def test_module_serves_the_escrows_of_a_file_with_latency(tmp_path) -> None:
    """What the end-to-end benchmark starts: the escrows its database holds, every answer late."""
    import time

    import polars as pl

    expected = synthetic_state(5, seed=4)
    file = tmp_path / "escrows.parquet"
    pl.DataFrame(
        {
            "contract_id": [s.contract_id for s in expected.escrows],
            "invoice_id": [s.invoice_id for s in expected.escrows],
            "funded_amount": [str(s.funded_amount) for s in expected.escrows],
            "amount": [str(s.amount) for s in expected.escrows],
            "funding_target": [str(s.funding_target) for s in expected.escrows],
            "status": [s.status for s in expected.escrows],
            "funding_token": [s.funding_token for s in expected.escrows],
        }
    ).write_parquet(file)
    with _serving("--escrows-file", str(file), "--latency-ms", "300") as url:
        keys = [instance_key(s.contract_id).to_xdr() for s in expected.escrows]
        started = time.perf_counter()
        answer = requests.post(
            url,
            json={"jsonrpc": "2.0", "id": 1, "method": "getLedgerEntries", "params": {"keys": keys}},
            timeout=30,
        ).json()
        assert time.perf_counter() - started >= 0.3
        served = [stellar_xdr.LedgerEntryData.from_xdr(e["xdr"]) for e in answer["result"]["entries"]]
        # The file carries what the audit reads; admin and SME addresses are the emulator's own.
        for entry, spec in zip(served, expected.escrows, strict=True):
            funded = next(
                f.val
                for item in entry.contract_data.val.instance.storage.sc_map
                if item.key.vec and item.key.vec.sc_vec[0].sym.sc_symbol == b"Escrow"
                for f in item.val.map.sc_map
                if f.key.sym.sc_symbol == b"funded_amount"
            )
            assert scval.from_int128(funded) == spec.funded_amount


def test_module_can_serve_an_rpc_without_get_events() -> None:
    from stellar_sdk.exceptions import SorobanRpcErrorResponse

    with _serving("--escrows", "1", "--without", "getEvents") as url, SorobanServer(url) as client:
        latest = client.get_health().latest_ledger
        try:
            client.get_events(latest - 10, filters=[])
        except SorobanRpcErrorResponse as exc:
            assert exc.code == -32601 and "getEvents" in exc.message
        else:
            raise AssertionError("getEvents answered")
        assert client.get_transaction("ab" * 32).status.value == "NOT_FOUND"
