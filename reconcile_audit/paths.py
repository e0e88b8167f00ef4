"""Where the project's non-Python files live (the package is installed editable from the repo)."""

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_DIR = PACKAGE_DIR.parent
SQL_DIR = PACKAGE_DIR / "sql"
TEMPLATES_DIR = PROJECT_DIR / "templates"
NOTEBOOK_PATH = PROJECT_DIR / "notebooks" / "reconcile_escrow.ipynb"
DEFAULT_OUTPUT_DIR = PROJECT_DIR / "reports"
