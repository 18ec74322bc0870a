# The two set-up commands of the README: `make run` and `make test`.
# Both create the virtual environment on first use (Python >= 3.11 must be on PATH as python3).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run test lint bench bundle bundle-smoke clean

$(BIN)/lsdm: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,baselines,postgres,scale]'
	touch $@

## Launch on the embedded default (builds the synthetic city on first use).
run: $(BIN)/lsdm
	$(BIN)/python launcher.py

## Run the whole test suite (installs Debian's Chromium and PostgreSQL for the browser and database tests when it can).
test: $(BIN)/lsdm chromium postgres
	$(BIN)/python -m pytest

## Lint: ruff's rules, then mypy on engine/ and db/, then the formatting check (settings in pyproject.toml).
lint: $(BIN)/lsdm
	$(BIN)/python -m ruff check .
	$(BIN)/python -m mypy
	$(BIN)/python -m ruff format --check .

# The end-to-end tests drive Debian's Chromium (Playwright downloads no browser). Installed when
# missing and apt-get is usable; otherwise those tests skip with the reason.
.PHONY: chromium
chromium:
	@test -x /usr/bin/chromium || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "note: Chromium not installed; browser tests will skip"; }

# The PostgreSQL tests (tests/db/test_postgres.py) start Debian's server in a private folder. Installed when
# missing and apt-get is usable; otherwise those tests skip with the reason.
.PHONY: postgres
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
	  || echo "note: PostgreSQL not installed; its tests will skip"; }

## Speed and memory measurements (JSON on stdout); not part of the tests.
bench: $(BIN)/lsdm
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

## The desktop bundle: dist/lsdm-dashboard/ (PyInstaller one-folder; executable dist/lsdm-dashboard/lsdm-dashboard,
## about 1 GB, 2 to 3 minutes on 2 cores), recorded in dist/lsdm-dashboard-build.json. What goes in:
## packaging/lsdm.spec and packaging/bundle_contents.py. CI does not build it (too slow and too big);
## `make test` runs tests/test_packaging.py, which checks the spec against the tree without building.
bundle: $(BIN)/pyinstaller
	$(BIN)/python packaging/build.py

$(BIN)/pyinstaller: $(BIN)/lsdm pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test,baselines,bundle]'
	touch $@

## Run the built bundle end to end (start, first page, one forecast job, SIGTERM); JSON on stdout.
bundle-smoke: $(BIN)/lsdm chromium
	$(BIN)/python packaging/smoke.py dist/lsdm-dashboard

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
