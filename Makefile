# Lianfang — the one front door. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Secure by default: TLS + SCRAM-SHA-512 + ACLs. PLAINTEXT=1 opts out (and says what that means).
# Each layout keeps its own data: .run/kafka-1node-secure, .run/kafka-3node-plain, ...
NODES ?= 1
KAFKA_DATA ?= .run/kafka-$(NODES)node-$(if $(PLAINTEXT),plain,secure)
KAFKA_UP = $(PY) -m deploy.kafka up --data $(KAFKA_DATA) --nodes $(NODES) $(if $(PLAINTEXT),,--secure)
STAMP := $(VENV)/.installed
# Test processes (pytest-xdist): each takes whole test files, with a broker of its own for the files
# that use the session's. The suite mostly waits on Kafka, so 2 take a third off its time even on 2 CPUs
# (17 minutes to 12-14½ here); 0 runs it in this one process.
TEST_WORKERS ?= 2
PYTEST_PAR = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)
# No column positions in tracebacks: CPython 3.11 can fail a parse that a finalizer's traceback interrupts
# (tests/conftest.py says how).
PYTEST = PYTHONNODEBUGRANGES=1 $(PY) -m pytest

.PHONY: help run test test-unit faults soak fuzz kafka-up kafka-down lint format bench prereqs jars deps runtime-deps docs prometheus clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-18s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

prereqs: ## check Python 3.11+, Java 17+ and Maven, and say how to fix what is missing
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found. fix: install Python 3.11+ (Debian: apt-get install python3 python3-venv)"; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "error: Python 3.11+ is needed, $(PYTHON) is $$($(PYTHON) -V 2>&1). fix: PYTHON=python3.11 make ..."; exit 1; }
	@$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || { echo "error: $(PYTHON) lacks venv/ensurepip. fix: apt-get install python3-venv"; exit 1; }
	@command -v java >/dev/null || [ -x "$$JAVA_HOME/bin/java" ] || { echo "error: Java 17+ not found (it runs the local Kafka broker). fix: apt-get install openjdk-17-jre-headless, or set JAVA_HOME"; exit 1; }
	@command -v mvn >/dev/null || { echo "error: Maven (mvn) not found (it fetches the Kafka jars once). fix: apt-get install maven"; exit 1; }

$(STAMP): pyproject.toml | prereqs
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@# confluent-kafka is only a benchmark baseline: used when its wheel installs, skipped otherwise.
	-@$(PY) -m pip install -q 'confluent-kafka>=2.4' >/dev/null 2>&1 || echo "note: confluent-kafka did not install; the benchmark leaves it out"
	@touch $@

deps: ## install the Debian packages the tests need (libsodium, jemalloc, prometheus, chromium, chromium-driver, fonts) when missing
	@bash deploy/system-deps.sh

runtime-deps: ## install the Debian packages the services need (libsodium, jemalloc) when missing
	@bash deploy/system-deps.sh runtime

jars: $(STAMP) ## fetch the Kafka broker jars from Maven Central (once)
	@$(PY) -m deploy.kafka fetch >/dev/null

run: $(STAMP) jars runtime-deps ## start the local secured Kafka and run the whole pipeline (Ctrl-C stops it; PLAINTEXT=1, NODES=3)
	@$(KAFKA_UP) >/dev/null
	@$(VENV)/bin/lianfang run --local-kafka $(KAFKA_DATA)

test: $(STAMP) jars deps ## run every test (unit, integration on a real Kafka, e2e) on TEST_WORKERS=2 processes
	$(PYTEST) $(PYTEST_PAR)

test-unit: $(STAMP) deps ## run the unit tests only (no network)
	$(PYTEST) $(PYTEST_PAR) -m unit

faults: $(STAMP) jars deps ## (root) every fault case on a three-node cluster, each host in a network namespace; prints recovery times
	LIANFANG_FAULTS=all $(PYTEST) -s -p no:cacheprovider tests/faults

soak: $(STAMP) jars deps ## (root) the pipeline under load with random faults (SOAK_MINUTES=30, SEED=1, RATE=4 leads/s, TRACE_MEMORY=0 s, FAULTS=0 for none); prints the figures
	$(PY) -m tests.faults.soak --minutes $(or $(SOAK_MINUTES),30) --seed $(or $(SEED),1) --rate $(or $(RATE),4) --trace-memory $(or $(TRACE_MEMORY),0) $(if $(filter 0,$(FAULTS)),--no-faults)

fuzz: $(STAMP) jars ## fuzz every target for 1,000,000 inputs (INPUTS=, SEED=); crashing inputs go to .run/fuzz
	$(PY) -m tests.fuzz --inputs $(or $(INPUTS),1000000) --seed $(or $(SEED),1) --artifacts .run/fuzz

kafka-up: $(STAMP) jars ## start a local Kafka (TLS + SCRAM + ACLs) and print its address (NODES=3; PLAINTEXT=1)
	@$(KAFKA_UP)

kafka-down: ## stop every local Kafka under .run/ (or KAFKA_DATA's); leaves no Java process behind
	@$(PYTHON) -m deploy.kafka down $(if $(filter-out file,$(origin KAFKA_DATA)),--data $(KAFKA_DATA),)

lint: $(STAMP) runtime-deps ## ruff (lint and format check) and mypy strict
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(STAMP) ## apply ruff's formatting and safe fixes
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(STAMP) jars ## run the benchmarks; prints figures and baselines, writes bench-results/*.json
	$(PY) -m tests.bench

docs: $(STAMP) ## write docs/configuration.md and docs/metrics.md from the settings classes and metrics modules
	$(PY) -m services.cli.reference configuration > docs/configuration.md
	$(PY) -m services.cli.reference metrics > docs/metrics.md

prometheus: deps ## run Prometheus on 127.0.0.1:9090 with deploy/prometheus (scrapes what make run starts)
	prometheus --config.file=deploy/prometheus/prometheus.yml --storage.tsdb.path=.run/prometheus --web.listen-address=127.0.0.1:9090

clean: kafka-down ## remove the virtualenv, local Kafka data and caches (keeps fetched jars)
	rm -rf $(VENV) .run .pytest_cache .mypy_cache .ruff_cache
