# Both entry points bootstrap .venv themselves; nothing is installed by hand.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench lab clean

$(VENV): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(VENV)

# The demo plants findings on purpose, so its expected exit code is 1 (findings), not 0.
# DEMO_ARGS=--deliver emails the demo's report with the SMTP_* / ALERT_EMAIL_* of the environment.
demo: $(VENV)
	$(BIN)/reconcile-audit demo $(DEMO_ARGS) || [ $$? -eq 1 ]

test: lint
	# One session, so the closing line counts every test: the suite, then nbval over the notebook.
	# --durations: CI's log names the slowest tests, so the suite can be kept under 10 minutes.
	$(BIN)/pytest tests notebooks/reconcile_escrow.ipynb --nbval-lax --nbval-current-env --durations=15

# ruff, then the parts' import arrows (import-linter contracts in pyproject.toml).
lint: $(VENV)
	$(BIN)/ruff check reconcile_audit tests benchmarks
	$(BIN)/lint-imports

# Minutes, not seconds: the seed's per-invoice and keyset paths are the slow references, and the
# end-to-end run builds (once, then cached in build/bench and PostgreSQL) a 1M-invoice source.
bench: $(VENV)
	$(BIN)/python benchmarks/e2e_bench.py --invoices 1000000 --repeats 3
	$(BIN)/python benchmarks/e2e_bench.py --invoices 1000000 --repeats 3 --rpc-latency-ms 50
	$(BIN)/python benchmarks/ledger_bench.py --escrows 100000 --repeats 5 --balances
	$(BIN)/python benchmarks/extract_bench.py --invoices 200000 --repeats 3

# The analyst's JupyterLab on the audit notebook: its stored defaults build a demo database.
lab: $(VENV)
	$(BIN)/pip install --quiet -e '.[dev,lab]'
	$(BIN)/jupyter lab notebooks/reconcile_escrow.ipynb

clean:
	rm -rf $(VENV) reports/*/ .pytest_cache
