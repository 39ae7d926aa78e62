# Everything runs inside .venv, created from requirements.lock on first use (offline apart from the package registries:
# pip for .venv; apt for chromium and postgresql when `make test` finds them missing).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MLFLOW_PORT ?= 5000
SERVE_PORT ?= 5001
export PYTHONDONTWRITEBYTECODE := 1
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.DEFAULT_GOAL := help
.PHONY: help install data browser postgres run report test lint ui tune serve bench pipeline-flow prefect-server \
	retrain-schedule stack stack-down stack-status deploy bench-stack bench-tune bench-predict bench-batch-label bench-serve \
	serve-mlflow clean-venv

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

run: data ## the whole pipeline on the real data: dvc repro (split -> train -> evaluate -> ... -> promote -> report)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

report: data ## the HTML report of the latest run (artifacts/report/index.html, runs stale stages first)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro report

tune: data ## Optuna studies on train/val, resumable (FAMILY=mobilevitv2 N_TRIALS=20 TIMEOUT=3600 optional)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro split
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/catalog-classifier tune $(if $(FAMILY),--family $(FAMILY)) \
		$(if $(N_TRIALS),--n-trials $(N_TRIALS)) $(if $(TIMEOUT),--timeout $(TIMEOUT))

# Debian's chromium package drives the browser tests (playwright's own browser downloads are never used).
browser: ## headless Chromium for the browser tests (apt-get install chromium when missing)
	@command -v chromium >/dev/null || { $(SUDO) apt-get update && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends chromium; }
	@chromium --version

# Debian's postgresql package: the team stack (make stack) and the tests run their own clusters with its binaries.
postgres: ## PostgreSQL server binaries (apt-get install postgresql when missing)
	@command -v pg_ctl >/dev/null || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || { $(SUDO) apt-get update && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends postgresql; }
	@ls /usr/lib/postgresql/*/bin/pg_ctl 2>/dev/null || command -v pg_ctl

TEST_WORKERS ?= 2
test: data browser postgres ## run the test suite (tiny configurations, TEST_WORKERS pytest workers, default 2)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

bench: data ## speed: training/inference vs a naive loop and the matmul peak (BENCH_ARGS=--quick for a smoke run)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro split
	$(BIN)/catalog-classifier bench $(BENCH_ARGS)

bench-predict: data ## prediction runtimes (torch vs ONNX Runtime), ONNX parity, batch predict images/s + peak RSS
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro split
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/catalog-classifier bench-predict $(BENCH_ARGS)

bench-batch-label: data ## the batch-label flow (Dask) with 1 and 2 local workers: images/s (MODEL_URI=models:/..)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m flows.batch_label --bench $(if $(MODEL_URI),--model-uri $(MODEL_URI))

bench-tune: data postgres ## tuning trials/hour with 1..N workers, Optuna storage cost per trial: sqlite vs PostgreSQL
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro split
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/catalog-classifier bench-tune $(BENCH_ARGS)

lint: $(STAMP) ## ruff
	$(BIN)/ruff check src tests flows

ui: $(STAMP) ## MLflow UI on 127.0.0.1:$(MLFLOW_PORT) over the project's store
	@echo "Experiments open on their training runs with the sidebar switch on 'Model training', or at"
	@echo "http://127.0.0.1:$(MLFLOW_PORT)/#/experiments/<id>?workflowType=machine_learning"
	$(BIN)/mlflow server --host 127.0.0.1 --port $(MLFLOW_PORT) \
		--backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db \
		--default-artifact-root $(CURDIR)/mlruns/artifacts

pipeline-flow: data ## the pipeline as a Prefect flow, one task per DVC stage (ARGS="--force --set train.max_epochs=2")
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m flows.pipeline $(ARGS)

prefect-server: $(STAMP) ## Prefect server + UI on the host/port in params.yaml (orchestration), default 127.0.0.1:4200
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m flows.retrain server

retrain-schedule: $(STAMP) ## serve the scheduled-retraining deployment (cron in params.yaml) on make prefect-server's server
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m flows.retrain serve
serve: $(STAMP) ## serve the registry's champion on 127.0.0.1:$(SERVE_PORT) (Ray Serve, adaptive batching, limits)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/catalog-classifier serve --host 127.0.0.1 --port $(SERVE_PORT)

serve-mlflow: $(STAMP) ## the reference server: mlflow models serve of the champion on 127.0.0.1:$(SERVE_PORT)
	$(BIN)/catalog-classifier serve --engine mlflow --host 127.0.0.1 --port $(SERVE_PORT)

bench-serve: data ## load test: Ray Serve vs mlflow models serve, 1/8/32 clients, real champion and test images
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro split
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/catalog-classifier bench-serve $(BENCH_ARGS)

# The team stack (params.yaml stack:, docs/scaling-out.md). Ports: params, or STACK_PG_PORT / STACK_MLFLOW_PORT /
# STACK_PREFECT_PORT on the command line or in the environment; a started stack keeps them until make stack-down.
STACK_SET = $(if $(STACK_PG_PORT),--set stack.postgres_port=$(STACK_PG_PORT)) \
	$(if $(STACK_MLFLOW_PORT),--set stack.mlflow_port=$(STACK_MLFLOW_PORT)) \
	$(if $(STACK_PREFECT_PORT),--set orchestration.server_port=$(STACK_PREFECT_PORT))
stack: $(STAMP) postgres ## start PostgreSQL, MLflow + Prefect servers on it, a process work pool and a worker (.stack/)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/catalog-classifier stack up $(STACK_SET)

stack-down: $(STAMP) ## stop every process of the stack (its data stays in .stack/)
	$(BIN)/catalog-classifier stack down

stack-status: $(STAMP) ## what of the stack runs and answers (exit 3 when a part is down)
	$(BIN)/catalog-classifier stack status

deploy: $(STAMP) ## register prefect.yaml's deployments (pipeline, scheduled retraining, tune) on the stack's work pool
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/catalog-classifier stack deploy

bench-stack: $(STAMP) ## MLflow log_batch latency: the stack's server on PostgreSQL vs local sqlite (needs make stack)
	$(BIN)/catalog-classifier bench-stack

clean-venv: ## remove .venv
	rm -rf $(VENV)
