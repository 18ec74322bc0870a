# The two set-up commands of the README: `make run` and `make test`.
# Both create the virtual environment on first use (Python >= 3.11 must be on PATH as python3).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run test bench clean

$(BIN)/lsdm: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

## Launch on the embedded default (builds the synthetic city on first use).
run: $(BIN)/lsdm
	$(BIN)/python launcher.py

## Run the whole test suite.
test: $(BIN)/lsdm
	$(BIN)/python -m pytest

## Speed and memory measurements (JSON on stdout); not part of the tests.
bench: $(BIN)/lsdm
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
