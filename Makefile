# The two commands of the README's quick start are `make demo` and `make test`; both create .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)

.PHONY: demo test test-fast lint bench install clean-demo

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

# bp vs fa on the paper's MNIST FC net over mnist-5k (grids/smoke.yaml), then the report.
demo: $(STAMP)
	$(BIN)/bioscale run grids/smoke.yaml --results runs/demo
	$(BIN)/bioscale report --results runs/demo --grid smoke

test: $(STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check bioscale tests benchmarks examples

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean-demo:
	rm -rf runs/demo
