# The two commands a newcomer runs (README): `make repro` and `make test`.
SHELL := /bin/bash
VENV := .venv
export NO_ALBUMENTATIONS_UPDATE := 1
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export DVC_NO_ANALYTICS := 1
export HF_HUB_OFFLINE := 1

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
