PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ANVIL  := .tools/node_modules/.bin/anvil
ANVIL_VERSION := 1.7.1

.PHONY: setup bytecode tools demo test lint format bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --editable ".[dev]"
	touch $(STAMP)

setup: $(STAMP) bytecode

# Byte-compiled modules, as pip leaves an installed package: where PYTHONDONTWRITEBYTECODE
# is set, every CLI call and node start would otherwise compile its modules again.
bytecode: $(STAMP)
	$(BIN)/python -m compileall -q -j 0 cli nodes ledger

# anvil, a real JSON-RPC Ethereum node the chain-backend tests run against
tools:
	@if [ -x $(ANVIL) ]; then :; \
	elif command -v npm >/dev/null 2>&1; then \
		npm install --silent --no-audit --no-fund --prefix .tools @foundry-rs/anvil@$(ANVIL_VERSION); \
	else echo "npm not found: tests that need anvil will be skipped"; fi

demo: $(STAMP) bytecode
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/demo.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint tools bytecode
	$(BIN)/pytest -q

bench: $(STAMP) bytecode
	$(BIN)/python bench/ledger_bench.py
	$(BIN)/python bench/nbd_bench.py
	$(BIN)/python bench/chunk_store_bench.py
	$(BIN)/python bench/pipeline_bench.py
	$(BIN)/python bench/manifest_bench.py
	$(BIN)/python bench/chunk_size_bench.py
	$(BIN)/python bench/storage_bench.py
	$(BIN)/python bench/scheduler_bench.py
	$(BIN)/python bench/fast_rollback_bench.py
	$(BIN)/python bench/interference_bench.py
	$(BIN)/python bench/replica_bench.py
	$(BIN)/python bench/wire_bench.py
	$(BIN)/python bench/volume_write_bench.py
	$(BIN)/python bench/latency_bench.py
	$(BIN)/python bench/snapshot_overhead_bench.py
	$(BIN)/python bench/import_bench.py
	$(BIN)/python bench/snapshot_bench.py
	$(BIN)/python bench/incremental_series_bench.py

clean:
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache
