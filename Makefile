# The usual verbs. `make server` and `make test` each do all set-up on a fresh machine.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
TEST_ENV := RUN_HANDLER_ENV=test

.PHONY: help install services-up services-down services-status db-up db-down db-migrate \
        db-downgrade gc server test-setup js-test-setup test benchmark memprofile load lint lint-fix format clean

help:
	@echo "make server        install, start PostgreSQL + MinIO, migrate, serve on :8000"
	@echo "make test          install, start services, reset the test database and bucket, run pytest"
	@echo "make benchmark     benchmarks against the storage floor; saves, compares, writes BENCHMARKS.md"
	@echo "make memprofile    peak memory: pytest-memray in process, RSS of a server taking a 1 GB batch"
	@echo "make load          32 clients for 60 s against one server, then a sample verified byte for byte"
	@echo "make services-up | services-down | services-status | db-migrate | db-downgrade | gc"
	@echo "make test-setup | lint | lint-fix | format | clean"

$(INSTALLED): setup.cfg setup.py pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "make: $(PYTHON) not found: install Python 3.11 or newer"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || \
		{ echo "make: could not create a virtualenv: install python3-venv"; exit 1; }
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,bench,lint]'
	@touch $@

install: $(INSTALLED)

services-up:
	@scripts/services.sh up

services-down:
	@scripts/services.sh down

services-status:
	@scripts/services.sh status

# The names the earlier README used.
db-up: services-up
db-down: services-down

db-migrate: install services-up
	$(BIN)/python -m handler migrate

db-downgrade: install services-up
	$(BIN)/python -m handler rollback

# Objects that no committed run points at (left by a crash); GRACE_SECONDS protects live batches.
GRACE_SECONDS ?= 3600
gc: install services-up
	$(BIN)/python -m handler gc --grace-seconds $(GRACE_SECONDS)

server: install services-up
	$(BIN)/python -m handler serve

test-setup: install js-test-setup
	@$(TEST_ENV) scripts/services.sh up
	$(TEST_ENV) $(BIN)/python tests/reset_env.py

# The JavaScript SDK the tests drive (tests/js, pinned by its package-lock.json).
js-test-setup:
	@if command -v node >/dev/null && command -v npm >/dev/null; then \
		test tests/js/node_modules/.package-lock.json -nt tests/js/package-lock.json || \
		(cd tests/js && npm ci --no-audit --no-fund); \
	else \
		echo "make: node/npm not found: the JavaScript SDK tests (tests/test_js_sdk.py) need Node 18+ and will be skipped"; \
	fi

test: test-setup
	$(TEST_ENV) $(BIN)/python -m pytest $(PYTEST_ARGS)

# Saves under .benchmarks/ and compares with the previous save (none the first time).
benchmark: test-setup
	$(TEST_ENV) $(BIN)/python -m pytest benchmarks/test_ingest.py -p no:cacheprovider \
		--benchmark-autosave --benchmark-compare --benchmark-columns=min,max,median,iqr,rounds
	$(TEST_ENV) $(BIN)/python -m benchmarks.put_cpu | tee .benchmarks/put_cpu.txt
	$(BIN)/python -m benchmarks.splitter_cpu | tee .benchmarks/splitter_cpu.txt
	$(BIN)/python -m benchmarks.report

memprofile: test-setup
	@mkdir -p .benchmarks
	$(TEST_ENV) $(BIN)/python -m pytest -q --memray benchmarks/test_memory.py -p no:cacheprovider \
		| tee .benchmarks/memory.txt
	$(TEST_ENV) $(BIN)/python -m benchmarks.rss_stream 1024 | tee -a .benchmarks/memory.txt
	$(TEST_ENV) $(BIN)/python -m benchmarks.rss_stream 1024 25000 | tee -a .benchmarks/memory.txt

# 32 clients streaming batches for 60 s against one server, then every sampled run verified.
load: install
	@$(TEST_ENV) scripts/services.sh up
	$(TEST_ENV) $(BIN)/python -m benchmarks.load $(LOAD_ARGS)

lint: install
	$(BIN)/ruff check handler tests benchmarks
	$(BIN)/ruff format --check handler tests benchmarks

lint-fix: install
	$(BIN)/ruff check --fix handler tests benchmarks

format: install
	$(BIN)/ruff format handler tests benchmarks

clean: services-down
	rm -rf .services
