# rayml: `make demo` serves the demo recommender, `make test` runs the suite. Both install into .venv first.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := .rayml/demo
PYTEST_ARGS ?=
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: help install demo demo-data test test-unit lint bench clean redis-server wrk test-tools rehearsal

help: ## Show the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

LOCKS := cluster/docker/requirements.lock cluster/docker/requirements.cpu.lock

# The runtime packages install at the image's pinned versions (the locks as constraints): the dev venv is what
# the image runs, and a new upstream release changes nothing until `cluster/docker/lock.py` is rerun.
$(STAMP): pyproject.toml $(LOCKS)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(addprefix -c ,$(LOCKS)) -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install rayml with its dev tools (only when pyproject changed).

demo-data: install ## Build the demo world, train and register models, generate candidates (reuses what exists).
	$(BIN)/rayml world build configs/world/demo.yaml --out $(DEMO)/world
	$(BIN)/rayml models train configs/models/demo.yaml --world $(DEMO)/world --registry $(DEMO)/registry
	$(BIN)/rayml models train-scorer --world $(DEMO)/world --registry $(DEMO)/registry
	$(BIN)/python batch_jobs/generate_candidates.py --config configs/batch/candidates.yaml
	$(BIN)/python batch_jobs/materialize_features.py --config configs/features/demo.yaml --state-dir $(DEMO)/online

demo: demo-data ## Everything in demo-data, then serve it (HAProxy ingress, auth on: prints tokens and a curl).
	$(BIN)/rayml serve serve_apps/recommender.yaml

rehearsal: demo-data ## A head and a spot worker on this machine: serve + spot batch, the worker killed mid-job (docs/multinode.md).
	$(BIN)/python -m rayml.deploy.rehearsal --config configs/rehearsal/local.yaml

redis-server: ## Install redis-server (Debian) when missing; the tests start their own on free ports.
	@command -v redis-server >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server; }

test-tools: redis-server ## Install what the suite drives besides Python: redis-server, chromium (the report test), promtool, tini (the image entrypoint test).
	@command -v chromium >/dev/null && command -v promtool >/dev/null && command -v tini >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium prometheus tini; }

wrk: ## Install wrk (Debian), the C load generator the edge benchmark drives.
	@command -v wrk >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk; }

test: install test-tools ## Run every test tier (unit, integration, e2e).
	$(BIN)/pytest $(PYTEST_ARGS)

test-unit: install ## Only the fast tests that need no Ray.
	$(BIN)/pytest -m unit $(PYTEST_ARGS)

lint: install ## ruff and mypy.
	$(BIN)/ruff check rayml serve_apps batch_jobs benchmarks tests
	$(BIN)/mypy

bench: install redis-server wrk ## Benchmarks; each prints one JSON line per measurement.
	@port=$$($(BIN)/python -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"); \
	redis-server --port $$port --bind 127.0.0.1 --save '' --appendonly no >/dev/null & rpid=$$!; sleep 0.5; \
	$(BIN)/python benchmarks/feature_store.py --redis-port $$port; status=$$?; kill $$rpid; exit $$status
	$(BIN)/python benchmarks/world_build.py
	$(BIN)/python benchmarks/batch_scoring.py
	$(BIN)/python benchmarks/candidate_generation.py
	$(MAKE) demo-data
	$(BIN)/python benchmarks/quality.py
	$(BIN)/python benchmarks/distillation.py
	$(BIN)/python benchmarks/serving.py --split
	@port=$$($(BIN)/python -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"); \
	redis-server --port $$port --bind 127.0.0.1 --save '' --appendonly no >/dev/null & rpid=$$!; sleep 0.5; \
	$(BIN)/python benchmarks/edge.py --redis-port $$port --overload; status=$$?; kill $$rpid; exit $$status
	$(BIN)/python benchmarks/replica_failure.py
	$(BIN)/python benchmarks/stage_cpu.py
	$(BIN)/python benchmarks/events_memory.py
	RAYML_SCHEMA_EXAMPLES=100 $(BIN)/pytest tests/integration/test_serving_schema.py -q

clean: ## Remove demo data (keeps .venv).
	rm -rf $(DEMO)
