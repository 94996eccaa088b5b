# The two commands a newcomer runs (README): `make repro` and `make test`.
SHELL := /bin/bash
VENV := .venv
# the telemetry switches (scripts/telemetry.env: KEY=VALUE lines), exported to every recipe
include scripts/telemetry.env
export $(shell sed -n 's/^\([A-Za-z_][A-Za-z0-9_]*\)=.*/\1/p' scripts/telemetry.env)

.PHONY: setup repro test test-slow lint

setup:
	@bash scripts/setup.sh

## set up, then run the main job: `dvc repro` on params.yaml
repro: setup
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH dvc repro

## set up, then run the default (fast) test suite
test: setup
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH pytest

## the long tests (minutes): full stage chains, resumption of real runs
test-slow: setup
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH pytest -m slow

lint: setup
	$(VENV)/bin/ruff check glsim pipelines tests benchmarks flows
