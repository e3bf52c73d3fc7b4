# PyAirtable platform. `make run` starts it, `make test` tests it; both install what they need.
PYTHON ?= python3
VENV := .venv
# What the Docker image installs (requirements-runtime.lock, then the package), for bench-services-runtime.
RUNTIME_VENV := .venv-runtime
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
# Every package pinned with its hashes (runtime + dev + the build backend), and the runtime part
# alone for the Dockerfile; `make lock` writes both from pyproject.toml.
LOCK := requirements.lock
RUNTIME_LOCK := requirements-runtime.lock
# Resolved for every platform (the image may be arm64) on the Python the platform runs on; uv keeps
# the pins already in the lock file unless UV_ARGS=--upgrade (or --upgrade-package NAME) says
# otherwise, and UV_ARGS=--offline locks from uv's cache alone.
UV_COMPILE = $(VENV)/bin/uv pip compile pyproject.toml - --quiet --generate-hashes --universal \
	--python-version 3.11 --custom-compile-command 'make lock' $(UV_ARGS)
# pyproject.toml's [build-system] requires, locked too so that the editable install builds offline.
BUILD_REQUIRES = $(PY) -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")'
# make test's pytest-xdist workers, each a run of its own (databases, Redis keys); a test file stays on
# one worker. Two cut the suite's time by a third on two cores, where much of it waits on servers it started;
# TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
# The services of shared/registry.py, and the gateway in front of them.
SERVICES := $(shell $(PYTHON) -m shared.registry) gateway

.DEFAULT_GOAL := help
.PHONY: help install lock run run-distributed smoke migrate test lint typecheck bench bench-argon2 bench-gateway bench-airtable bench-services bench-services-runtime bench-analytics bench-clients soak-outbox faults clean $(addprefix run-,$(SERVICES)) check-monitoring

help: ## List the targets
	@grep -hE '^[a-zA-Z_%()$$ ,-]+:.*## ' $(MAKEFILE_LIST) | sed 's/^$$(addprefix run-,$$(SERVICES)): run-%/run-<service>/' \
		| awk 'BEGIN {FS = ":.*## "} {printf "  %-22s %s\n", $$1, $$2}'

$(INSTALLED): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $@

install: $(INSTALLED) ## Create .venv and install the platform with its dev tools, exactly as requirements.lock pins them

lock: $(INSTALLED) ## Regenerate requirements.lock and requirements-runtime.lock (hashed) from pyproject.toml
	$(BUILD_REQUIRES) | $(UV_COMPILE) -o $(RUNTIME_LOCK)
	$(BUILD_REQUIRES) | $(UV_COMPILE) --extra dev --constraint $(RUNTIME_LOCK) -o $(LOCK)

run: $(INSTALLED) ## Migrate and start the whole platform on :8080 (embedded: SQLite, in-memory stores)
	$(PY) -m embedded migrate
	$(PY) -m embedded serve

run-distributed: $(INSTALLED) ## The platform as deployed: each service its own process on local PostgreSQL and Redis (honcho)
	$(PY) deploy/local.py start

smoke: $(INSTALLED) ## Walk a running platform through its gateway: make smoke URL=http://127.0.0.1:8080 [API_KEY=...]
	@URL="$(URL)" API_KEY="$(API_KEY)" $(PY) -m bench.smoke

$(addprefix run-,$(SERVICES)): run-%: $(INSTALLED) ## Run one service alone on its own port, e.g. make run-auth_service
	$(PY) -m $* migrate
	$(PY) -m $* serve

migrate: $(INSTALLED) ## Apply every service's migrations (DATABASE_URL / <SERVICE>_DATABASE_URL)
	$(PY) -m embedded migrate

test: $(INSTALLED) check-monitoring ## Run the whole test suite (needs PostgreSQL and Redis on loopback)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

lint: $(INSTALLED) ## ruff: lint and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(INSTALLED) ## mypy --strict on the services and the kernel
	$(VENV)/bin/mypy shared embedded $(SERVICES)

bench: $(INSTALLED) ## Login vs raw argon2id benchmark (ratio, side by side); see docs/PERFORMANCE.md
	$(PY) -m bench.login_vs_argon2
bench-argon2: $(INSTALLED) ## The auth service's argon2 hasher (memory in huge pages) vs argon2-cffi's own, side by side
	$(PY) -m bench.argon2_hashers $(BENCH_ARGS)

bench-gateway: $(INSTALLED) ## Gateway (1 and 2 workers) vs nginx vs direct (wrk, 1 and 50 connections); installs nginx and wrk
	@command -v nginx >/dev/null && command -v wrk >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx wrk)
	$(PY) -m bench.gateway_vs_nginx

bench-airtable: $(INSTALLED) ## Airtable gateway: cache-hit vs trivial proxied GET (wrk), a 100-read burst vs the 20 s floor
	@command -v wrk >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk)
	$(PY) -m bench.airtable_gateway
bench-services: $(INSTALLED) ## Each service's hottest routes vs a minimal Litestar + psycopg app on PostgreSQL + Redis (wrk), CPU/request, RSS
	@command -v wrk >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk)
	$(PY) -m bench.services $(BENCH_ARGS)
bench-services-runtime: $(INSTALLED) $(RUNTIME_VENV)/.installed ## bench-services with the services on the Docker image's runtime install (the memory goal's conditions)
	@command -v wrk >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk)
	$(PY) -m bench.services --python $(RUNTIME_VENV)/bin/python $(BENCH_ARGS)
$(RUNTIME_VENV)/.installed: pyproject.toml $(RUNTIME_LOCK)
	$(PYTHON) -m venv $(RUNTIME_VENV)
	$(RUNTIME_VENV)/bin/python -m pip install --quiet --require-hashes -r $(RUNTIME_LOCK)
	$(RUNTIME_VENV)/bin/python -m pip install --quiet --no-deps --no-build-isolation .
	touch $@
bench-analytics: $(INSTALLED) ## Analytics ingestion vs raw COPY, and queries at 1,000,000 events (needs PostgreSQL)
	$(PY) -m bench.analytics_ingest
bench-clients: $(INSTALLED) ## The gateway's upstream HTTP client vs httpx, httpx+aiohttp, aiohttp (side by side)
	$(PY) -m bench.http_clients
soak-outbox: $(INSTALLED) ## RELIABILITY E1: 1,000 registrations, auth and users SIGKILLed mid-stream; see docs/RELIABILITY.md
	$(PY) -m bench.outbox_crash_soak $(SOAK_ARGS)

faults: $(INSTALLED) ## Fault harness: Redis, PostgreSQL, a service and Airtable faulted under load; see docs/RELIABILITY.md
	$(PY) -m bench.faults $(FAULTS_ARGS)

clean: ## Remove the virtualenv and local data
	rm -rf $(VENV) $(RUNTIME_VENV) data

check-monitoring: ## promtool (installed if missing) checks deploy/prometheus: config, rules and their unit tests
	@sh deploy/prometheus/install-promtool.sh
	cd deploy/prometheus && promtool check config prometheus.yml && promtool check config prometheus.local.yml \
		&& promtool test rules alerts.test.yml
