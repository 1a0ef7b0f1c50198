VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test soak demo lint format clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# (a venv made before the distribution was renamed holds the old one: it goes first)
	-$(PY) -m pip uninstall -q -y redismq 2>/dev/null
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	@# Compiled once: the tests start hundreds of Python processes (workers, the CLI), and
	@# where PYTHONDONTWRITEBYTECODE is set each would compile the package again.
	$(PY) -m compileall -q redismq workers cli tests examples >/dev/null
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The full fault soak (tests/fault/soak.py): 100,000 tasks through 2 brokers with Sentinel,
# the NameServer and 3 workers while processes, a master and connections are killed; prints
# its table and fails if an acknowledged task is lost. `make test` runs a short version.
# SOAK_ARGS adds options, e.g. SOAK_ARGS="--seed 7 --keep /tmp/soak --json /tmp/soak.json".
soak: $(STAMP)
	$(PY) -m tests.fault.soak --tasks 100000 --time-limit 1800 $(SOAK_ARGS)

demo: $(STAMP)
	$(VENV)/bin/redismq demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PY) tools/import_cycles.py

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) build *.egg-info
