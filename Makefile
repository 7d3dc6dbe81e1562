# The README's quickstart: `make demo` and `make test` on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench install clean oracle constraints

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Installs exactly the versions in constraints.txt (what CI tested); `make constraints`
# re-resolves pyproject.toml's ranges to the newest releases and rewrites the file.
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
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

constraints:
	rm -rf .venv-constraints
	$(PYTHON) -m venv .venv-constraints
	.venv-constraints/bin/pip install --quiet --upgrade pip
	.venv-constraints/bin/pip install --quiet -e '.[test]'
	{ echo "# Resolved dependencies CI installs (pip install -c constraints.txt)."; \
	  echo "# Regenerate with: make constraints"; \
	  .venv-constraints/bin/pip freeze --exclude-editable; } > constraints.txt
	rm -rf .venv-constraints

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
