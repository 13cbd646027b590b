# The usual verbs. `make server` and `make test` each do all set-up on a fresh machine.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
TEST_ENV := RUN_HANDLER_ENV=test

.PHONY: help install concurrency connections services-up services-down services-status db-up db-down db-migrate \
        db-downgrade gc compact retain server test-setup js-test-setup ui-test-setup nginx-test-setup ui-screenshot test fuzz benchmark memprofile load scaling lint lint-fix format clean

help:
	@echo "make server        install, start PostgreSQL + MinIO, migrate, serve on localhost:8000"
	@echo "make test          install, start services, reset the test database and bucket, run pytest"
	@echo "make fuzz         property tests unseeded and longer, then atheris on the splitter, the fast path"
	@echo "                   against RunSplitter (SEED= to replay)"
	@echo "make benchmark     benchmarks against the storage floor; saves, compares, writes BENCHMARKS.md"
	@echo "make memprofile    peak memory: pytest-memray in process, RSS of a server taking a 1 GB batch"
	@echo "make load          32 clients for 60 s against one server, then a sample verified byte for byte"
	@echo "                   (WORKERS=n: its processes; URL=http://host:port: a running server instead)"
	@echo "make connections   slow headers, a connection flood, 32 large runs refused: what clients get"
	@echo "make scaling       make load at WORKERS=1, WORKERS=2, nginx + 2 instances, and with a worker killed"
	@echo "make services-up | services-down | services-status | db-migrate | db-downgrade | gc | compact | retain"
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

# Segments whose live bytes are below MIN_LIVE of their size, rewritten (see README).
MIN_LIVE ?= 0.5
compact: install services-up
	$(BIN)/python -m handler compact --grace-seconds $(GRACE_SECONDS) --min-live $(MIN_LIVE)

# Expired traces deleted (README: Retention); AS_OF=<ISO 8601 time> expires as if it were then,
# DRY_RUN=1 counts only.
retain: install services-up
	$(BIN)/python -m handler retain $(if $(AS_OF),--as-of $(AS_OF)) $(if $(DRY_RUN),--dry-run)

server: install services-up
	$(BIN)/python -m handler serve

test-setup: install js-test-setup ui-test-setup nginx-test-setup
	@$(TEST_ENV) scripts/services.sh up
	$(TEST_ENV) $(BIN)/python tests/reset_env.py

# The browser the viewer's tests drive (tests/test_ui.py): Debian's chromium and chromium-driver.
ui-test-setup:
	@scripts/install_chromium.sh

# The JavaScript SDK the tests drive (tests/js, pinned by its package-lock.json).
js-test-setup:
	@if command -v node >/dev/null && command -v npm >/dev/null; then \
		test tests/js/node_modules/.package-lock.json -nt tests/js/package-lock.json || \
		(cd tests/js && npm ci --no-audit --no-fund); \
	else \
		echo "make: node/npm not found: the JavaScript SDK tests (tests/test_js_sdk.py) need Node 18+ and will be skipped"; \
	fi

# Debian's nginx, for tests/test_nginx.py (deploy/nginx.conf in front of two instances), as root.
nginx-test-setup:
	@if ! command -v nginx >/dev/null && ! test -x /usr/sbin/nginx; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "make: nginx not found; installing Debian's nginx (for tests/test_nginx.py)"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null || \
				echo "make: could not install nginx: tests/test_nginx.py will be skipped"; \
		else \
			echo "make: nginx not found: tests/test_nginx.py will be skipped (Debian: apt-get install nginx)"; \
		fi; \
	fi

test: test-setup
	$(TEST_ENV) $(BIN)/python -m pytest $(PYTEST_ARGS)

# New cases, not CI: the splitter's property tests (pytest -m property) on Hypothesis's "fuzz"
# profile, FUZZ_EXAMPLES examples each from a random seed (printed first, and again on a failure;
# SEED=<n> replays it), then FUZZ_SECONDS of coverage-guided atheris (libFuzzer, same seed), which
# also requires the fast path (FastSplitter) and RunSplitter to end alike on every input. Needs
# no services. atheris is installed here only, not in the extras.
FUZZ_EXAMPLES ?= 3000
FUZZ_SECONDS ?= 120
fuzz: install
	@$(BIN)/python -c "import atheris" 2>/dev/null || $(BIN)/python -m pip install -q atheris
	@seed=$${SEED:-$$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}; \
	echo "make fuzz: seed $$seed (replay: make fuzz SEED=$$seed)"; \
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(TEST_ENV) $(BIN)/python -m pytest tests/test_hostile_input.py tests/test_fastpath.py -m property \
		-p no:cacheprovider --hypothesis-profile=fuzz --hypothesis-seed=$$seed -q \
		|| { echo "make fuzz: property tests failed with seed $$seed (replay: make fuzz SEED=$$seed)"; exit 1; }; \
	mkdir -p .fuzz-corpus; \
	$(BIN)/python tests/fuzz_splitter.py -seed=$$seed -max_total_time=$(FUZZ_SECONDS) -max_len=4096 \
		-artifact_prefix=.fuzz-corpus/crash- .fuzz-corpus \
		|| { echo "make fuzz: atheris found a crash with seed $$seed (its input: .fuzz-corpus/crash-*)"; exit 1; }

# Saves under .benchmarks/ and compares with the previous save (none the first time).
benchmark: test-setup
	$(TEST_ENV) $(BIN)/python -m pytest benchmarks/test_ingest.py -p no:cacheprovider \
		--benchmark-autosave --benchmark-compare --benchmark-columns=min,max,median,iqr,rounds
	$(TEST_ENV) $(BIN)/python -m benchmarks.put_cpu | tee .benchmarks/put_cpu.txt
	$(BIN)/python -m benchmarks.splitter_cpu | tee .benchmarks/splitter_cpu.txt
	$(TEST_ENV) $(BIN)/python -m benchmarks.segment_sizes | tee .benchmarks/segment_sizes.txt
	$(TEST_ENV) $(BIN)/python -m benchmarks.monitor_query | tee .benchmarks/monitor_query.txt
	$(TEST_ENV) $(BIN)/python -m benchmarks.ingest_cpu | tee .benchmarks/ingest_cpu.txt
	$(TEST_ENV) $(BIN)/python -m benchmarks.query_1m
	$(TEST_ENV) $(BIN)/python -m benchmarks.otlp | tee .benchmarks/otlp.txt
	$(TEST_ENV) $(BIN)/python -m benchmarks.latency | tee .benchmarks/latency.txt
	$(TEST_ENV) $(BIN)/python -m benchmarks.row_write | tee .benchmarks/row_write.txt
	$(TEST_ENV) $(BIN)/python -m benchmarks.cpu_profile --runs-per-batch 1 --sdk-numbers \
		--variant "no group, ijson" "GROUP_MAX_BYTES=0 FAST_SPLITTER=0" \
		--variant "group, ijson" "FAST_SPLITTER=0" --variant "group, fast path" "" \
		| tee .benchmarks/cpu_profile.txt
	$(TEST_ENV) $(BIN)/python -m benchmarks.cpu_profile --runs-per-batch 100 --sdk-numbers \
		--variant "ijson (FAST_SPLITTER=0)" "FAST_SPLITTER=0" --variant "fast path" "" \
		| tee -a .benchmarks/cpu_profile.txt
	$(TEST_ENV) $(BIN)/python -m benchmarks.cpu_profile --runs-per-batch 100 \
		--variant "ijson (FAST_SPLITTER=0)" "FAST_SPLITTER=0" --variant "fast path" "" \
		| tee -a .benchmarks/cpu_profile.txt
	$(TEST_ENV) $(BIN)/python -m benchmarks.cpu_profile --sdk \
		--variant "no group, ijson" "GROUP_MAX_BYTES=0 FAST_SPLITTER=0" --variant "group, fast path" "" \
		| tee -a .benchmarks/cpu_profile.txt
	$(BIN)/python -m benchmarks.report

memprofile: test-setup
	@mkdir -p .benchmarks
	$(TEST_ENV) $(BIN)/python -m pytest -q --memray benchmarks/test_memory.py -p no:cacheprovider \
		| tee .benchmarks/memory.txt
	$(TEST_ENV) $(BIN)/python -m benchmarks.rss_stream 1024 | tee -a .benchmarks/memory.txt
	$(TEST_ENV) $(BIN)/python -m benchmarks.rss_stream 1024 25000 | tee -a .benchmarks/memory.txt

# N clients at once, each one run of a 90 MB string, with default settings (5.8 GB over loopback at 64).
concurrency: test-setup
	@mkdir -p .benchmarks
	$(TEST_ENV) $(BIN)/python -m benchmarks.concurrency 8 | tee .benchmarks/concurrency.txt
	$(TEST_ENV) $(BIN)/python -m benchmarks.concurrency 32 | tee -a .benchmarks/concurrency.txt
	$(TEST_ENV) $(BIN)/python -m benchmarks.concurrency 64 | tee -a .benchmarks/concurrency.txt

# Hostile clients at the connection level (issue 26): slow headers, a connection flood (the server's
# open-file limit lowered to 4096 after its start, so MAX_CONNECTIONS is set to what that limit gives),
# and 32 clients x one run of a 90 MB string sent with Content-Length.
connections: test-setup
	@mkdir -p .benchmarks
	$(TEST_ENV) $(BIN)/python -m benchmarks.connections slow-headers 3000 65 | tee .benchmarks/connections.txt
	MAX_CONNECTIONS=3687 $(TEST_ENV) $(BIN)/python -m benchmarks.connections flood 4090 20 4096 \
		| tee -a .benchmarks/connections.txt
	$(TEST_ENV) $(BIN)/python -m benchmarks.connections large-runs 32 90 | tee -a .benchmarks/connections.txt

# 32 clients streaming batches for 60 s against one server, then every sampled run verified.
# WORKERS= the server's processes (default 1); URL= send to a running server (or nginx) instead.
load: install
	@$(TEST_ENV) scripts/services.sh up
	$(TEST_ENV) $(BIN)/python -m benchmarks.load --workers $(or $(WORKERS),1) $(if $(URL),--url $(URL)) $(LOAD_ARGS)

# The load at each scale (WORKERS=1, WORKERS=2, nginx + 2 instances, a worker killed), for BENCHMARKS.md.
scaling: install nginx-test-setup
	@$(TEST_ENV) scripts/services.sh up
	@mkdir -p .benchmarks
	$(TEST_ENV) $(BIN)/python -m benchmarks.scaling $(SCALING_ARGS) | tee .benchmarks/scaling.txt

# The README's screenshots of the viewer, from a real traced pipeline (docs/trace-page.png,
# docs/chat-view.png, docs/monitor.png).
ui-screenshot: install ui-test-setup
	@$(TEST_ENV) scripts/services.sh up
	$(TEST_ENV) $(BIN)/python scripts/ui_screenshot.py docs

lint: install
	$(BIN)/ruff check handler tests benchmarks
	$(BIN)/ruff format --check handler tests benchmarks

lint-fix: install
	$(BIN)/ruff check --fix handler tests benchmarks

format: install
	$(BIN)/ruff format handler tests benchmarks

clean: services-down
	rm -rf .services
