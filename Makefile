# The README's quickstart: `make demo` and `make test` on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench install clean oracle

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/rc-instagram demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python -m tests.benchmarks

# Refresh tests/oracle/rest-typings-schemas.json from the pinned @rocket.chat/rest-typings
# (needs node + npm and the npm registry; `make test` only reads the committed file).
oracle:
	cd tests/oracle && npm ci && node dump_schemas.mjs rest-typings-schemas.json

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
