# Two entry points (see README): `make run` and `make test`. Everything else is a step of theirs.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test install admin-ui hapi java-test lint typecheck unit api integration bench clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) is required"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The calendar page's third-party code (FullCalendar, Luxon): npm ci from the committed lockfile.
ADMIN_UI       := plugin/admin_ui
ADMIN_UI_STAMP := $(ADMIN_UI)/node_modules/.installed
$(ADMIN_UI_STAMP): $(ADMIN_UI)/package.json $(ADMIN_UI)/package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo "npm (Node 20) is required for the calendar page"; exit 1; }
	cd $(ADMIN_UI) && npm ci --no-audit --no-fund --loglevel=error
	touch $(ADMIN_UI_STAMP)

admin-ui: $(ADMIN_UI_STAMP)

hapi:
	scripts/hapi.sh build

# The HAPI interceptors' own unit tests (the guard's decisions; what forwarding forwards and adds to
# the CapabilityStatement); the Python suites test them in HAPI.
java-test:
	mvn -q -B -Dstyle.color=never -f plugin/hapi/pom.xml test

# Starts HAPI (:8080) and the sidecar (:8090), loads the sample clinic, prints a $find URL.
run: install admin-ui hapi
	$(PY) scripts/run_local.py

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy

# The whole suite: lint, types, unit, API and integration tests against a real HAPI FHIR server.
test: install admin-ui hapi java-test lint typecheck
	$(VENV)/bin/pytest -q -p no:cacheprovider

unit: install
	$(VENV)/bin/pytest -q tests/unit

api: install admin-ui
	$(VENV)/bin/pytest -q tests/api

integration: install admin-ui hapi
	$(VENV)/bin/pytest -q tests/integration

# The end-to-end benchmark's quick run (under 3 minutes; HAPI on H2): `python -m bench` for the
# full one (docs/performance.md).
bench: install hapi
	$(PY) -m bench --quick

clean:
	rm -rf build $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis $(ADMIN_UI)/node_modules
