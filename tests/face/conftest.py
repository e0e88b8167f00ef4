"""Fixtures the face tests share: a small demo dataset and an emulator serving its escrows.

A module that needs another dataset (more invoices, history) defines its own ``dataset``, which
pytest prefers over this one; the ``emulator`` then serves that module's dataset.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from reconcile_audit.emulator.server import Emulator
from reconcile_audit.face import demo
from tests.services import running_pushgateway


@pytest.fixture(scope="module")
def dataset() -> demo.DemoData:
    """60 invoices with every planted finding, no history: the smallest demo that has them all."""
    return demo.build_dataset(60, history_nights=0)


@pytest.fixture(scope="module")
def emulator(dataset: demo.DemoData) -> Iterator[Emulator]:
    with Emulator(dataset.ledger_state(0)) as running:
        yield running


@pytest.fixture(scope="module")
def pushgateway() -> Iterator[str]:
    """A real Pushgateway for the module's runs; its URL."""
    with running_pushgateway() as url:
        yield url
