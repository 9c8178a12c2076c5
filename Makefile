# Kubetune developer commands. `make help` lists them.
KUBETUNE_CACHE ?= $(HOME)/.cache/kubetune
VENV ?= $(KUBETUNE_CACHE)/venv
PYTHON ?= $(VENV)/bin/python
PYTEST_ARGS ?=
# Two pytest-xdist workers: e2e tests partly wait (on Jobs, leases, outages) while another
# runs; on 2 cores the real trainers keep both busy, so the gain is small (27.9 min against
# 30). Tests sharing a cluster of their own stay on one worker (tests/conftest.py).
TEST_WORKERS ?= 2

.PHONY: help install lint format generate verify test test-unit up down image demo demo-down

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

install: ## install system packages, the Python environment and the cluster binaries
	bash .ci/setup

lint: ## ruff lint and format check, mypy (strict) on the operator, import layers
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m mypy
	PYTHONPATH=operator:trainer_image $(VENV)/bin/lint-imports

format: ## apply ruff's fixes and formatting
	$(PYTHON) -m ruff check --fix .
	$(PYTHON) -m ruff format .

generate: ## regenerate CRDs and API docs from the pydantic models
	$(PYTHON) -m kubetune.crdgen

verify: ## fail when generated files are stale
	$(PYTHON) -m kubetune.crdgen --check

test: lint ## the whole suite: lint, unit tests, and e2e tests on a devcluster it starts
	$(PYTHON) -m pytest -n $(TEST_WORKERS) --durations=25 $(PYTEST_ARGS)

test-unit: ## tests that need no cluster
	$(PYTHON) -m pytest -m "not e2e" $(PYTEST_ARGS)

up: ## start (or reuse) a local devcluster
	$(PYTHON) -m devcluster up

down: ## stop the local devcluster and remove its state
	$(PYTHON) -m devcluster down

image: ## build the trainer image with buildah (no Docker engine needed)
	$(PYTHON) -m devcluster image

demo: install ## start a devcluster, run a real fine-tuning iteration, show it live
	$(PYTHON) -m devcluster.demo up

demo-down: ## stop the demo's devcluster and remove its state
	$(PYTHON) -m devcluster.demo down
