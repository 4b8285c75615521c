# relaymail: `make run` starts it on the sample config, `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test interop lint bench fuzz clean constraints

# Every dependency at its version in constraints.txt (pip freeze of a working .venv).
$(STAMP): setup.py pyproject.toml constraints.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[test]' --config-settings editable_mode=compat
	touch $(STAMP)

# After a deliberate upgrade in .venv: write its versions (header kept); then test.
constraints:
	{ sed -n '/^#/p' constraints.txt; $(BIN)/pip freeze --exclude-editable; } > constraints.new
	mv constraints.new constraints.txt

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
	$(BIN)/mypy relaymail

# Bytecode as an installed package has it (PYTHONDONTWRITEBYTECODE may be set here):
# every process start, acceptors' included, would otherwise compile relaymail again.
bench: $(STAMP)
	WITH_POSTFIX=1 scripts/system-deps
	$(BIN)/python -m compileall -q relaymail twisted > /dev/null
	$(BIN)/python bench/run.py
	$(BIN)/python bench/policy.py
	$(BIN)/python bench/scale.py
	$(BIN)/python bench/hotpath.py
	$(BIN)/python bench/events.py

fuzz: $(STAMP)
	$(BIN)/python bench/fuzz.py --inputs 1000000

clean:
	rm -rf $(VENV) var build *.egg-info twisted/plugins/dropin.cache
