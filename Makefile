PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint bench clean

$(BIN)/python:
	$(shell command -v $(PYTHON) || command -v python3) -m venv $(VENV)
	$(BIN)/pip install --progress-bar on --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --progress-bar on -e .
	touch $@

$(VENV)/.installed-test: $(BIN)/python pyproject.toml
	$(BIN)/pip install --progress-bar on -e ".[test]"
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/pacs serve

# the OIDC provider the tests run (npm, pinned); offline outside CI its tests skip
NODE_TESTKIT := testkit/node/node_modules/.package-lock.json

$(NODE_TESTKIT): testkit/node/package.json testkit/node/package-lock.json
	cd testkit/node && npm ci --no-audit --no-fund || [ "$$CI" != true ]

# TEST_WORKERS=0 runs the suite in one process
TEST_WORKERS ?= 2

test: $(VENV)/.installed-test $(NODE_TESTKIT)
	TCP_NODELAY=1 $(BIN)/pytest -q -rfEs --durations=25 -n $(TEST_WORKERS) --dist loadgroup

lint: $(VENV)/.installed-test
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy && $(BIN)/lint-imports

bench: $(VENV)/.installed-test
	TCP_NODELAY=1 $(BIN)/python -m bench.ingest

clean:
	rm -rf $(VENV) var
