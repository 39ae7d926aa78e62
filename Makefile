# Everything runs inside .venv, created from requirements.lock on first use (offline apart from the package index).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MLFLOW_PORT ?= 5000
export PYTHONDONTWRITEBYTECODE := 1

.DEFAULT_GOAL := help
.PHONY: help install data run repro test lint ui bench clean-venv

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "} {printf "  make %-18s %s\n", $$1, $$2}'

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP) ## create .venv with the pinned dependencies and the package

data: $(STAMP) ## fetch the pinned dataset version from the DVC remote (no-op when present)
	$(BIN)/dvc pull data.dvc

run: data ## the whole pipeline on the real data: dvc repro (split -> train -> evaluate -> compare)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

test: data ## run the test suite (tiny configurations; includes a DVC pipeline on a subset)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -q

bench: data ## speed: training/inference vs a naive loop and the matmul peak (BENCH_ARGS=--quick for a smoke run)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro split
	$(BIN)/catalog-classifier bench $(BENCH_ARGS)

lint: $(STAMP) ## ruff
	$(BIN)/ruff check src tests flows

ui: $(STAMP) ## MLflow UI on 127.0.0.1:$(MLFLOW_PORT) over the project's store
	$(BIN)/mlflow server --host 127.0.0.1 --port $(MLFLOW_PORT) \
		--backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db \
		--default-artifact-root $(CURDIR)/mlruns/artifacts

clean-venv: ## remove .venv
	rm -rf $(VENV)
