# The two commands the README opens with: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench clean

demo: $(VENV)/.installed
	$(BIN)/uni demo --out demo_out

test: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q tests

bench: $(VENV)/.installed
	$(BIN)/python bench/run_all.py --out BENCHMARKS.md

lint: $(VENV)/.installed
	$(BIN)/ruff check .

# torch is pinned to the CPU wheel first: a bare `torch` requirement would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip "setuptools>=70.1"
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

clean:
	rm -rf $(VENV) demo_out
