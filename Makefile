# gpuforge: `make lab` provisions the local lab; `make test` runs every test tier (docs/architecture.md, "Tests").
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
# Molecule scenarios, one per role; ROLE=name runs one.
SCENARIOS := $(sort $(notdir $(patsubst %/molecule.yml,%,$(wildcard molecule/*/molecule.yml))))
ROLE ?= $(filter-out cluster,$(SCENARIOS))
# `make test` runs every scenario but vllm_serve's: the e2e tier serves that role on the lab (two groups, a unit
# per head) and checks what its scenario checks, and the scenario alone is the molecule tier's longest (about
# 18 min beside the e2e tier). `make molecule ROLE=vllm_serve` runs it.
TEST_ROLES ?= $(filter-out vllm_serve,$(ROLE))
# What molecule and e2e need first; `make test` sets it up once, then runs both side by side with INFRA empty.
INFRA ?= infra

.PHONY: help venv infra lab lab-up lab-down lab-status lint unit molecule e2e test clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	@if ! $(PYTHON) -c 'import venv, ensurepip' 2>/dev/null; then \
	  echo "[gpuforge] installing python3-venv"; apt-get update -q && apt-get install -y -q python3-venv; fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed  ## create the virtualenv with the pinned toolchain

infra: venv  ## Docker engine, lab networks, apt cache and Debian 12/13 images
	gpuforge lab infra

lab: venv  ## bring up the lab and run site.yml on it
	gpuforge lab up
	gpuforge provision -i inventories/lab

lab-up: venv  ## bring up the lab without provisioning it
	gpuforge lab up

lab-down: venv  ## remove the lab's containers, networks and generated inventory
	gpuforge lab down

lab-status: venv  ## show the lab hosts
	gpuforge lab status

lint: venv  ## yamllint, ansible-lint (production profile), ruff, syntax check
	yamllint --strict .
	ansible-lint --profile production
	ruff check .
	ansible-playbook --syntax-check -i inventories/prod site.yml
	@for pb in playbooks/*.yml; do ansible-playbook --syntax-check -i inventories/prod "$$pb" >/dev/null || exit 1; done
	@echo "lint: clean"

unit: venv  ## unit tests of plugins, filters, preflight and the CLI
	pytest tests/unit

molecule: venv $(INFRA)  ## molecule test for each role (ROLE=name for one)
	@for s in $(ROLE); do echo "== molecule test -s $$s"; start=$$(date +%s); \
	  molecule test -s $$s || exit 1; echo "== molecule $$s passed in $$(( $$(date +%s) - start )) s"; done

e2e: venv $(INFRA)  ## the lab end to end: provision, idempotence, preflight
	pytest tests/e2e --durations=5

# Molecule and e2e run side by side, each line tagged with its tier: both spend most of their time waiting on
# their own containers (dpkg, pip, vLLM loading a model), so together they take about two thirds of their sum.
# Their containers, networks and names are separate; they share the Docker engine and the apt cache.
test: lint unit infra  ## every tier: what CI runs
	@start=$$(date +%s); \
	( $(MAKE) --no-print-directory molecule INFRA= ROLE="$(TEST_ROLES)" 2>&1 | sed -u 's/^/[molecule] /' ) & molecule=$$!; \
	( $(MAKE) --no-print-directory e2e INFRA= 2>&1 | sed -u 's/^/[e2e] /' ) & e2e=$$!; \
	failed=""; wait $$molecule || failed="$$failed molecule"; wait $$e2e || failed="$$failed e2e"; \
	echo "make test: molecule and e2e took $$(( $$(date +%s) - start )) s"; \
	if [ -n "$$failed" ]; then echo "make test: failed:$$failed"; exit 1; fi; \
	echo "make test: all tiers passed"

clean: lab-down  ## lab down and remove local state (keeps images and the apt cache)
	rm -rf runs .cache
