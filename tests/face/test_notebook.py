"""The committed notebook: no outputs, a documented parameters cell, one described cell per stage."""

from __future__ import annotations

import ast
import re

import nbformat
import papermill
import pytest

from reconcile_audit.compute.settings import SECRET_ONLY_FROM_ENV
from reconcile_audit.resources import NOTEBOOK_PATH

STAGES = (
    "extract",
    "resolve",
    "ledger",
    "classify",
    "explain",
    "history",
    "emit",
    "persist",
    "render",
    "deliver",
)


@pytest.fixture(scope="module")
def notebook() -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOK_PATH, as_version=4)


def test_committed_without_outputs(notebook):
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code
    for cell in code:
        assert cell.outputs == [], cell.source[:60]
        assert cell.execution_count is None, cell.source[:60]
    nbformat.validate(notebook)


def test_first_code_cell_is_parameters_with_literals_and_help(notebook):
    first = next(cell for cell in notebook.cells if cell.cell_type == "code")
    assert "parameters" in first.metadata.get("tags", [])
    tree = ast.parse(first.source)
    for node in tree.body:
        assert isinstance(node, ast.AnnAssign), ast.dump(node)[:80]
        # Literal defaults only: papermill does not recompute derived values.
        ast.literal_eval(node.value)
    inspected = papermill.inspect_notebook(str(NOTEBOOK_PATH))
    assert set(inspected) == {node.target.id for node in tree.body}
    for name, info in inspected.items():
        assert info["help"], f"parameter {name} has no # help comment"
        assert info["inferred_type_name"] in {"str", "int", "bool", "float"}
    assert not set(inspected) & SECRET_ONLY_FROM_ENV
    assert not any("password" in name for name in inspected)


def test_stored_defaults_send_nothing(notebook):
    inspected = papermill.inspect_notebook(str(NOTEBOOK_PATH))
    assert inspected["deliver"]["default"] == "False"
    assert inspected["database_url"]["default"] == '""'
    assert inspected["output_dir"]["default"] == '""'


def test_one_described_cell_per_stage_in_order(notebook):
    described = []
    for cell in notebook.cells:
        match = re.search(r"^#papermill_description=(\S+)", cell.source, re.MULTILINE)
        if cell.cell_type == "code" and match:
            described.append(match.group(1))
    assert described == ["settings", *STAGES]


def test_emit_comes_before_persist(notebook):
    sources = [cell.source for cell in notebook.cells if cell.cell_type == "code"]
    emit_at = next(i for i, s in enumerate(sources) if "emit.emit_findings(" in s)
    persist_at = next(i for i, s in enumerate(sources) if "run.persist(" in s)
    assert emit_at < persist_at


def test_drill_down_uses_duckdb_over_findings(notebook):
    after_deliver = False
    drill = []
    for cell in notebook.cells:
        if "#papermill_description=deliver" in cell.source:
            after_deliver = True
        elif after_deliver and cell.cell_type == "code":
            drill.append(cell.source)
    assert any("invoice_id = $1" in s for s in drill)
    assert any("tenant_id" in s and "$1" in s for s in drill)
