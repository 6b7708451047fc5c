# RepoVault developer targets (GNU make).
#   make install   editable install with the dev tools
#   make up        start the local services (PostgreSQL, Kafka, MinIO, Keycloak); `make down` stops them
#   make status    which service is up and where;  make logs [SERVICE=kafka]
#   make env       print the RV_* settings of the running stack (eval "$$(make -s env)")
#   make test      install, start the stack, lint, type-check, run the tests
PYTHON ?= python3
STACK  ?= $(PYTHON) stack/localstack.py
SERVICE ?=

.PHONY: install up down status logs env stack-install lint typecheck pytest test bench

install:
	$(PYTHON) -m pip install -e '.[dev]'

# Fetch/build the services into ~/.cache/repovault without starting them.
stack-install:
	$(STACK) install

# Local processes, no container engine needed.
up:
	$(STACK) start

down:
	$(STACK) stop

status:
	$(STACK) status

logs:
	$(STACK) logs $(SERVICE)

env:
	@$(STACK) env

lint:
	ruff check .

typecheck:
	mypy

pytest:
	$(PYTHON) -m pytest

test: install up
	$(MAKE) lint typecheck pytest

bench:
	$(PYTHON) -m repovault_daemons.bench
