# slmserve — `make run` serves the default model, `make test` runs lint and every test.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEFAULT_MODEL := models/SmolLM2-135M-Instruct.Q4_1.gguf
ONNX_MODEL := models/SmolLM2-135M-Instruct-onnx-int4-cpu
# A second model family for the tests: Gemma 3 270M (a base model), GGUF and converted ONNX.
GEMMA_MODEL := models/gemma-3-270m-q4_k_m.gguf
GEMMA_ONNX_MODEL := models/gemma-3-270m-onnx-int4-cpu
# Exactly one ONNX Runtime GenAI build per environment: cpu here (cuda / directml elsewhere).
EXTRAS ?= dev,convert,cpu,bench,deploy

# Root, or through sudo, for the Debian packages the deploy checks install when missing.
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: help install models test-models run lint test test-fast test-e2e test-deploy test-fleet test-tools deploy-tools fleet-tools image bench soak clean

help:
	@echo "make run    - set up, fetch the default model, serve it on 127.0.0.1:8000"
	@echo "make test   - set up, lint (ruff + mypy), run the whole test suite"
	@echo "make models - fetch the default GGUF model and build its ONNX version in models/"
	@echo "make test-models - also Gemma 3 270M (GGUF and ONNX), the tests' second model family"
	@echo "make lint   - ruff and mypy"
	@echo "make test-deploy - Prometheus/Grafana checks, the CPU image and the Helm chart"
	@echo "make test-fleet - two replicas behind HAProxy (Redis store, Prometheus), restarted under load"
	@echo "make image  - build the CPU image with podman (localhost/slmserve:cpu)"

# The virtualenv is rebuilt when pyproject.toml changes. llama-cpp-python is pinned, so pip
# reuses the wheel it compiled once (its wheel cache survives between runs on a machine).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

install: $(STAMP)

$(DEFAULT_MODEL): | $(STAMP)
	$(BIN)/slmserve fetch-model --dest models

# The ONNX int4 CPU build of the default model, converted locally (skipped when up to date).
$(ONNX_MODEL)/genai_config.json: $(DEFAULT_MODEL) | $(STAMP)
	$(BIN)/slmserve convert $(DEFAULT_MODEL) --output $(ONNX_MODEL) --precision int4 --provider cpu

models: $(DEFAULT_MODEL) $(ONNX_MODEL)/genai_config.json

$(GEMMA_MODEL): | $(STAMP)
	$(BIN)/slmserve fetch-model --model gemma-3-270m --dest models

$(GEMMA_ONNX_MODEL)/genai_config.json: $(GEMMA_MODEL) | $(STAMP)
	$(BIN)/slmserve convert $(GEMMA_MODEL) --output $(GEMMA_ONNX_MODEL) --precision int4 --provider cpu

test-models: models $(GEMMA_MODEL) $(GEMMA_ONNX_MODEL)/genai_config.json

# SLMSERVE_HOST, SLMSERVE_PORT, SLMSERVE_MODELS (and every other SLMSERVE_* setting) apply.
run: install models
	$(BIN)/slmserve serve

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: install test-models lint test-tools
	$(BIN)/pytest -m "not deploy and not fleet"

test-fast: install test-tools
	$(BIN)/pytest -m "not e2e and not fleet"

test-e2e: install test-models
	$(BIN)/pytest -m e2e

# Side by side in one run: slmserve, llama-cpp-python's server, the bare engines.
bench: install models
	$(BIN)/python -m bench.run

# Thousands of mixed requests, some abandoned mid-stream: nothing lost, no slot left held.
soak: install models
	$(BIN)/python -m bench.soak

# Debian's redis-server: the response store's tests run against a real one (make test).
test-tools:
	@command -v redis-server >/dev/null || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends redis-server; }

# Debian packages; hadolint, Helm (as a library) and kubernetes-validate come from PyPI (the
# `deploy` extra, installed with the rest).
DEPLOY_PACKAGES := prometheus podman buildah runc catatonit debootstrap uidmap slirp4netns fuse-overlayfs

deploy-tools:
	@for tool in prometheus promtool podman buildah runc catatonit debootstrap; do \
	  command -v $$tool >/dev/null || missing=1; done; \
	[ -z "$$missing" ] || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(DEPLOY_PACKAGES); }
	@command -v npm >/dev/null || { echo "npm is required (Node.js) for the dashboard check"; exit 1; }

# The CPU image, built with podman from a local Debian base (no registry needed).
image: install deploy-tools
	PYTHON=$(BIN)/python docker/build-local.sh

test-deploy: install models deploy-tools image
	$(BIN)/pytest -m deploy

# HAProxy, Redis and Prometheus from Debian (HAProxy lives in /usr/sbin).
FLEET_PACKAGES := haproxy redis-server prometheus

fleet-tools:
	@for tool in /usr/sbin/haproxy redis-server prometheus; do \
	  command -v $$tool >/dev/null || missing=1; done; \
	[ -z "$$missing" ] || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(FLEET_PACKAGES); }

# Two replicas behind HAProxy sharing Redis, scraped by Prometheus; each restarted under load.
test-fleet: install models fleet-tools
	$(BIN)/pytest -m fleet -s

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
