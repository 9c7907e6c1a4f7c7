# pneumo-node: `make run` starts the node on its defaults, `make test` runs every test.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# cmake builds the bundled C codecs (libjpeg-turbo, CharLS); nasm gives
# libjpeg-turbo its SIMD code. The rest are the tests' peers.
BUILD_PACKAGES := cmake nasm
SYSTEM_PACKAGES := $(BUILD_PACKAGES) dcmtk dicom3tools orthanc
VENV := .venv
PY := $(VENV)/bin/python
STAMPS := .deps
BIN := target/release/pneumo-node

.PHONY: help deps build run test lint test-rust test-e2e clean FORCE

help:
	@echo "make run         build and start the node on its defaults (port 11112, data under ./var)"
	@echo "make test        install what the tests need, then run every test, fmt and clippy"
	@echo "make test-model  PyTorch vs ONNX Runtime checks of model/ (installs torch, large)"
	@echo "make demo-model  rebuild fixtures/models/pneumollm-tiny.onnx"
	@echo "make deps        Debian packages and the Python venv (.venv) only"
	@echo "make build       the release binary (target/release/pneumo-node)"
	@echo "make lint        cargo fmt --check and clippy"
	@echo "make clean       remove build outputs, .venv and ./var"
	@echo "PNEUMO_CONFIG=FILE make run   run with a configuration file"

include model/model.mk

$(STAMPS)/system: scripts/install-system-packages.sh Makefile
	@mkdir -p $(STAMPS)
	./scripts/install-system-packages.sh $(SYSTEM_PACKAGES)
	@touch $@

$(STAMPS)/build-tools: scripts/install-system-packages.sh Makefile
	@mkdir -p $(STAMPS)
	./scripts/install-system-packages.sh $(BUILD_PACKAGES)
	@touch $@

# Rebuilt when requirements.txt changes or .venv is gone. Debian's python3
# makes venvs only with python3-venv installed.
$(STAMPS)/venv: requirements.txt $(if $(wildcard $(PY)),,FORCE)
	@mkdir -p $(STAMPS)
	[ -x $(PY) ] || python3 -m venv $(VENV) || { ./scripts/install-system-packages.sh python3-venv && rm -rf $(VENV) && python3 -m venv $(VENV); }
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	@touch $@

deps: $(STAMPS)/system $(STAMPS)/venv

build: $(STAMPS)/build-tools
	cargo build --release --workspace --bins

run: $(STAMPS)/venv build
	mkdir -p var
	$(BIN) serve

lint: $(STAMPS)/build-tools
	cargo fmt --all --check
	cargo clippy --release --workspace --all-targets -- -D warnings

test-rust: $(STAMPS)/build-tools
	cargo test --release --workspace

test-e2e: deps build
	PNEUMO_NODE_BIN=$(abspath $(BIN)) $(PY) -m pytest -q tests

test: deps lint test-rust test-e2e

clean:
	cargo clean
	rm -rf $(STAMPS) $(VENV) var

FORCE:
