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

## Run the whole test suite (installs Debian's Chromium for the browser tests when it can).
test: $(BIN)/lsdm chromium
	$(BIN)/python -m pytest

# The end-to-end tests drive Debian's Chromium (Playwright downloads no browser). Installed when
# missing and apt-get is usable; otherwise those tests skip with the reason.
.PHONY: chromium
chromium:
	@test -x /usr/bin/chromium || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "note: Chromium not installed; browser tests will skip"; }

## Speed and memory measurements (JSON on stdout); not part of the tests.
bench: $(BIN)/lsdm
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
