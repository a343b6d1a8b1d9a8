# nasx: `make demo` (quick start), `make test` (test suite), `make bench` (performance ratios).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: venv demo test test-all bench clean

venv: $(VENV)/.installed

# torch is pinned to the CPU build 2.13.0 through constraints.txt (a bare `torch` would pull GBs of CUDA wheels).
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[test]"
	touch $@

demo: venv
	$(BIN)/nasx experiment=quickstart

test: venv
	$(BIN)/python -m pytest -q

bench: venv
	$(BIN)/python benchmarks/supernet_overhead.py

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
