# RepoVault developer targets (GNU make).
#   make install   editable install with the dev tools
#   make up        start the local services (PostgreSQL, Kafka, MinIO, Keycloak); `make down` stops them
#   make status    which service is up and where;  make logs [SERVICE=kafka]
#   make env       print the RV_* settings of the running stack (eval "$$(make -s env)")
#   make test      install, start the stack, lint, type-check, run the tests
PYTHON ?= python3
STACK  ?= $(PYTHON) stack/localstack.py
SERVICE ?=
WORKERS ?= 1

.PHONY: install test-tools up down status logs env stack-install stack-up lint typecheck pytest test bench

install:
	$(PYTHON) -m pip install -e '.[dev]'

# Programs the tests use besides the four services: OpenSSH's server (the SSH repository
# tests run a private sshd on a loopback port). Installed from Debian when missing.
test-tools:
	@command -v git >/dev/null || { echo "make: git is required" >&2; exit 1; }
	@if [ ! -x /usr/sbin/sshd ]; then \
	  echo "make: installing openssh-server (for the SSH repository tests)" >&2; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends openssh-server >/dev/null \
	    || { echo "make: could not install openssh-server; install it by hand (apt-get install openssh-server)" >&2; exit 1; }; \
	fi

# The local stack, whatever else this host has (tests always run against it).
stack-up:
	$(STACK) start

# Fetch/build the services into ~/.cache/repovault without starting them.
stack-install:
	$(STACK) install

# Docker Compose when a Docker engine with the compose plugin answers, else the local
# processes of stack/localstack.py (no container engine needed). DEPLOY=local or
# DEPLOY=compose forces one.
up:
	@if [ "$(DEPLOY)" != local ] && docker info >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then \
	  echo "make up: Docker engine found: starting the Compose deployment (compose.yml)" >&2; \
	  [ -f .env ] || { echo "make up: no .env: run cp .env.example .env and change its passwords" >&2; exit 1; }; \
	  docker compose up -d --build --wait; \
	elif [ "$(DEPLOY)" = compose ]; then \
	  echo "make up: DEPLOY=compose but no Docker engine with the compose plugin answers" >&2; exit 1; \
	else \
	  echo "make up: no Docker engine with compose: starting the local stack (stack/localstack.py)" >&2; \
	  $(STACK) start && $(PYTHON) stack/daemons.py start --workers $(WORKERS); \
	fi

down:
	@if [ "$(DEPLOY)" != local ] && docker info >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then \
	  echo "make down: stopping the Compose deployment (volumes are kept)" >&2; \
	  docker compose down; \
	else \
	  echo "make down: stopping the local stack (stack/localstack.py)" >&2; \
	  $(PYTHON) stack/daemons.py stop; $(STACK) stop; \
	fi

status:
	@$(STACK) status; $(PYTHON) stack/daemons.py status || true

logs:
	@if [ "$(DEPLOY)" != local ] && docker info >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then \
	  echo "make logs: Compose deployment" >&2; \
	  docker compose logs --tail=200 $(SERVICE); \
	else \
	  echo "make logs: local stack (stack/localstack.py)" >&2; \
	  $(STACK) logs $(SERVICE); \
	fi

env:
	@$(STACK) env

lint:
	ruff check .

typecheck:
	mypy

pytest:
	$(PYTHON) -m pytest

test: install test-tools stack-up
	$(MAKE) lint typecheck pytest

# The pipeline benchmark (bench/README.md): prints figures and MISSED goals, exits 0;
# BENCH_ARGS passes options, e.g. make bench BENCH_ARGS="--rounds 3 --profile".
bench: install stack-up
	$(PYTHON) -m bench.pipeline $(BENCH_ARGS)
	$(PYTHON) -m bench.memory --mib 40 400
