# `make demo` and `make test` each create .venv if it is missing, install the project into it,
# and run. Nothing else is needed on a fresh machine with Python >= 3.11.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
OUT ?= runs/demo

.PHONY: demo test test-slow test-all docs bench bench-inner wheel-check clean

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

# The documentation site, built offline into site/ (API pages from the docstrings, the
# notebooks as pages); --strict turns every warning (a broken link, a docstring parameter
# that is not in the signature) into a failure.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict -d site

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
	$(BENCH_VENV)/bin/python -m benchmarks.levers
	$(BENCH_VENV)/bin/python -m benchmarks.scaling
	$(BENCH_VENV)/bin/python -m benchmarks.conv_peers
	$(BENCH_VENV)/bin/python -m benchmarks.compile
	$(BENCH_VENV)/bin/python -m benchmarks.report

# E-MSA's inner steps against wall time (four problems, five seeds; about six minutes).
bench-inner: $(BENCH_STAMP)
	$(BENCH_VENV)/bin/python -m benchmarks.inner_steps --seeds 5 --save

# The wheel alone, without this checkout: build it, install it into a fresh venv, and train from
# a directory where nothing of the checkout can be imported.
WHEEL_VENV ?= .venv-wheel
wheel-check: $(STAMP)
	rm -rf dist $(WHEEL_VENV)
	$(BIN)/python -m pip wheel --quiet --no-deps -w dist .
	$(BIN)/python -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(WHEEL_VENV)/bin/python -m pip install --quiet dist/*.whl
	here=$$(pwd) && cd "$$(mktemp -d)" && "$$here/$(WHEEL_VENV)/bin/controlnet" train --problem ring --samples 64 \
		--iters 5 --quiet --out run && test -s run/result.json && test -s run/flow.png && \
		"$$here/$(WHEEL_VENV)/bin/python" -c "import controlnet, controlnet_cli, problems, solvers, studies; \
		assert all('site-packages' in m.__file__ for m in (controlnet, controlnet_cli, problems, solvers, studies)), controlnet.__file__; print('wheel OK:', controlnet.__file__)"

clean:
	rm -rf $(VENV) $(BENCH_VENV) $(WHEEL_VENV) dist runs site .pytest_cache
