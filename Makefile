# `make demo` and `make test` each create .venv if it is missing, install the project into it,
# and run. Nothing else is needed on a fresh machine with Python >= 3.11.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
OUT ?= runs/demo

.PHONY: demo test test-slow test-all bench bench-inner clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/controlnet train --problem ring --solver gd --iters 500 --out $(OUT)
	@echo "pictures and result in $(OUT)/ (flow.png, loss.png, result.json)"

test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --dist loadscope -m "not slow"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --dist loadscope -m slow

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --dist loadscope

# `make bench`: the peers (diffrax, equinox, torch, torchdiffeq) live in their own venv, never in
# the library's dependencies. Writes benchmarks/results.json and prints the ratio tables.
BENCH_VENV ?= .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed-stamp

$(BENCH_STAMP): pyproject.toml benchmarks/requirements.txt
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install --quiet -e . -r benchmarks/requirements.txt
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BENCH_VENV)/bin/python -m benchmarks.peers
	$(BENCH_VENV)/bin/python -m benchmarks.scaling
	$(BENCH_VENV)/bin/python -m benchmarks.conv_peers

# E-MSA's inner steps against wall time (four problems, five seeds; about six minutes).
bench-inner: $(BENCH_STAMP)
	$(BENCH_VENV)/bin/python -m benchmarks.inner_steps --seeds 5 --save

clean:
	rm -rf $(VENV) $(BENCH_VENV) runs .pytest_cache
