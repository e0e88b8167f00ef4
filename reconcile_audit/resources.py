"""The packaged non-Python files: SQL, the notebook and the report templates.

``notebooks/`` and ``templates/`` are sources at the top of the repository; the build maps them
into the package as ``reconcile_audit.notebooks`` and ``reconcile_audit.templates``
(``pyproject.toml``, ``[tool.setuptools.package-dir]``). importlib.resources finds them the same
way in an editable checkout and in an installed wheel, so nothing here knows where the
repository is.
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path
from typing import Final

SQL_DIR: Final = Path(str(files("reconcile_audit") / "sql"))
TEMPLATES_DIR: Final = Path(str(files("reconcile_audit.templates")))
NOTEBOOK_PATH: Final = Path(str(files("reconcile_audit.notebooks") / "reconcile_escrow.ipynb"))
OUTPUT_DIR_VARIABLE: Final = "RECONCILE_OUTPUT_DIR"


def default_output_dir() -> Path:
    """Where runs go unless told: ``$RECONCILE_OUTPUT_DIR``, else ``reports/`` in the working folder."""
    return Path(os.environ.get(OUTPUT_DIR_VARIABLE) or "reports").absolute()
