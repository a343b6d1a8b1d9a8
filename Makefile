# nasx: `make demo` (quick start), `make test` (test suite), `make bench` (performance ratios),
# `make install-check` (a regular `pip install .` runs from anywhere).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: venv demo test test-all bench install-check clean

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

# `pip install .` (not editable) into a fresh venv, then a tiny quickstart from an empty directory: the installed package
# alone, configs included (nasx.conf), must run and write results.json there. Every nasx/ module and conf/ yaml must be
# installed. The sources are copied first, so that the build leaves no build/ directory in the checkout; --no-compile
# skips byte-compiling torch's thousands of modules (which files are installed is the same).
INSTALL_CHECK_RUN := experiment=quickstart 'space.stage_repeats=[1,1,2,1]' space.input_size=16 train.epochs=2 \
	train.warmup_epochs=1 retrain.epochs=1 search.strategy.generations=2 search.strategy.population=4 \
	search.strategy.top_k=2 search.strategy.crossover_size=2 search.bn_batches=2 progress=false

install-check:
	@set -u; start=$$(date +%s); tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	fail() { echo "install-check: FAILED: $$*" >&2; exit 1; }; \
	mkdir "$$tmp/src" "$$tmp/run" && cp -R pyproject.toml README.md nasx conf hydra_plugins "$$tmp/src/" || fail "copying the sources"; \
	echo "install-check: pip install -c constraints.txt . into a fresh venv ($$tmp/venv)"; \
	$(PYTHON) -m venv "$$tmp/venv" || fail "creating a venv"; \
	"$$tmp/venv/bin/python" -m pip install -q --upgrade pip || fail "pip install --upgrade pip"; \
	"$$tmp/venv/bin/python" -m pip install -q --no-compile -c "$(CURDIR)/constraints.txt" "$$tmp/src" || fail "pip install ."; \
	echo "install-check: installed ($$(( $$(date +%s) - start )) s)"; \
	cd "$$tmp/run" || fail "cd $$tmp/run"; \
	env -u PYTHONPATH "$$tmp/venv/bin/python" -c 'import pathlib, sys, nasx; \
	repo, pkg = pathlib.Path(sys.argv[1]), pathlib.Path(nasx.__file__).parent; \
	assert pkg.is_relative_to(sys.prefix), f"nasx imported from {pkg}, not from the venv"; \
	want = [pkg / p.relative_to(repo / "nasx") for p in (repo / "nasx").rglob("*.py")] \
	     + [pkg / "conf" / p.relative_to(repo / "conf") for p in (repo / "conf").rglob("*.yaml")] \
	     + [pkg.parent / p.relative_to(repo) for p in (repo / "hydra_plugins").rglob("*.py")]; \
	missing = [str(p.relative_to(pkg.parent)) for p in want if not p.is_file()]; \
	sys.exit("not installed (pyproject.toml [tool.setuptools]): " + " ".join(missing) if missing else 0)' "$(CURDIR)" \
	  || fail "the installed package is incomplete"; \
	echo "install-check: nasx $(INSTALL_CHECK_RUN)  (in $$tmp/run)"; \
	env -u PYTHONPATH WANDB_MODE=offline MPLBACKEND=Agg "$$tmp/venv/bin/nasx" $(INSTALL_CHECK_RUN) \
	  || fail "the installed nasx did not run from $$tmp/run"; \
	find outputs -name results.json | grep -q . || fail "no outputs/**/results.json in $$tmp/run"; \
	echo "install-check: ok ($$(( $$(date +%s) - start )) s)"

bench: venv
	$(BIN)/python benchmarks/supernet_overhead.py
	$(BIN)/python benchmarks/search_overhead.py
	$(BIN)/python benchmarks/ddp_search.py

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
