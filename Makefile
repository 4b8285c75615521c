# relaymail: `make run` starts it on the sample config, `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test interop lint bench fuzz clean

$(STAMP): setup.py pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]' --config-settings editable_mode=compat
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/twistd -n --pidfile= relaymail --config etc/relay.json

test: $(STAMP)
	scripts/system-deps
	$(BIN)/python -m pytest -q tests --ignore=tests/interop

interop: $(STAMP)
	WITH_INTEROP=1 scripts/system-deps
	$(BIN)/python -m pytest -q tests/interop

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	WITH_POSTFIX=1 scripts/system-deps
	$(BIN)/python bench/run.py
	$(BIN)/python bench/policy.py
	$(BIN)/python bench/scale.py

fuzz: $(STAMP)
	$(BIN)/python bench/fuzz.py --inputs 1000000

clean:
	rm -rf $(VENV) var build *.egg-info twisted/plugins/dropin.cache
