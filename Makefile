# Every target creates .venv and installs what it needs on its own: `make demo` and `make test` work on a
# fresh clone with only Python 3.11 and pip.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Public demo secrets, passed the way a store passes real ones (environment, not the settings file).
DEMO_ENV := POS_EDGE_CENTRAL__TOKEN=demo-store-token POS_EDGE_API__TOKEN=demo-api-token \
	POS_EDGE_PRIVACY__PHONE_HASH_KEY=demo-phone-hash-key-not-secret

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

demo: setup
	mkdir -p .demo
	$(DEMO_ENV) $(BIN)/pos-edge run --config config/demo.toml

test: setup
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python bench/member_cache.py

clean:
	rm -rf $(VENV) .demo .pytest_cache .hypothesis
