# Every target creates .venv and installs what it needs on its own: `make demo` and `make test` work on a
# fresh clone with only Python 3.11 and pip.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Public demo secrets, passed the way a store passes real ones (environment, not the settings file).
DEMO_ENV := POS_EDGE_CENTRAL__TOKEN=demo-store-token POS_EDGE_API__TOKEN=demo-api-token \
	POS_EDGE_PRIVACY__PHONE_HASH_KEY=demo-phone-hash-key-not-secret POS_EDGE_HELP__TILL_TOKEN=demo-api-token

# Debian packages: a CJK font for raster receipts, previews and the screens, zbar for the alternative camera
# decoder, libusb for USB printers, PostgreSQL for the central service's tests on PostgreSQL, Chromium for the
# kiosk and till screen tests (tests/ui drive it with Playwright); systemd (systemd-analyze), cage and shellcheck
# for the checks of the units and the installer in systemd/ (tests/agent/test_systemd_units.py, tests/agent/test_installer.py).
SYSTEM_PACKAGES := fonts-wqy-microhei libzbar0 libusb-1.0-0 postgresql chromium systemd cage shellcheck
# systemd-nspawn and curl (requests inside the container), for `make service-check` only (`make test` needs neither).
SERVICE_CHECK_PACKAGES := systemd-container curl

.PHONY: setup system-packages demo lint test bench bench-central chaos soak service-check screenshots clean

setup: system-packages $(STAMP)

# Installs what is missing when run as root (CI, a store's installer); otherwise prints the one command to run.
system-packages:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if ! command -v apt-get >/dev/null; then \
		echo "note: install the equivalents of: $$missing (needed for raster receipts and the zbar decoder)"; \
	elif [ "$$(id -u)" = 0 ]; then \
		echo "installing Debian packages: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	else \
		echo "Debian packages missing; run:  sudo apt-get install -y $$(echo $$missing)"; \
	fi

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

# The central service (seeded with demo members, store DEMO01), a WeChat Pay simulator and the kiosk's agent
# (K01, port 8766) in the background, the till's agent (T01, port 8765) in the foreground: two stations, each
# with its own simulated scanner and printer and its own folder under .demo/. Ctrl-C stops them all.
demo: setup
	mkdir -p .demo/kiosk
	$(BIN)/pos-central seed-demo --config config/central-demo.toml
	@$(BIN)/pos-central simulate wechat --config config/central-demo.toml & simulator=$$!; \
	$(BIN)/pos-central serve --config config/central-demo.toml & central=$$!; \
	$(DEMO_ENV) $(BIN)/pos-edge run --config config/demo-kiosk.toml & kiosk=$$!; \
	trap 'kill $$kiosk $$central $$simulator 2>/dev/null; wait $$kiosk $$central $$simulator' EXIT; \
	cat config/demo-banner.txt; \
	$(DEMO_ENV) $(BIN)/pos-edge run --config config/demo.toml

# The README's pictures (docs/screenshots), taken by the kiosk's browser tests against a whole store.
screenshots: setup
	UPDATE_SCREENSHOTS=1 $(BIN)/python -m pytest -q tests/ui/test_kiosk.py tests/ui/test_kiosk_member.py

# Formatting and lint (ruff), the house's import rules (import-linter), types (mypy); `make test` runs it first.
lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy

# Tests run on every core (at most 4 workers; each starts its own PostgreSQL and browser): most of a test is
# waiting on sockets, processes and disks, so two workers on two cores take about 9 minutes where one took 15.
test: setup lint
	$(BIN)/python -m pytest -n auto --maxprocesses 4

# The chaos run (tests/chaos): central, the WeChat Pay and Alipay simulators and the agent as separate processes on
# 127.0.0.1, a fault proxy between the agent and central (resets, delays, blackholes), the agent killed and central
# restarted while a driver sells every kind of sale; then the money at the providers, central and the till's journal
# are checked against each other and a table of figures is printed. Exit 1 on any violation. `chaos` is a bounded run
# of three seeds (about 3.5 minutes) that CI runs; `soak` is the same for an hour, on other seeds.
chaos: setup
	$(BIN)/python -m tests.chaos --seed 1 --seeds 3 --minutes 3.5

soak: setup
	$(BIN)/python -m tests.chaos --seed 101 --seeds 12 --minutes 60

# The agent as a store runs it, as root: this machine's own systemd booted in a throw-away container (systemd-nspawn
# on an overlay of /), the agent installed by systemd/install.sh from a wheel folder made from .venv, then READY, a
# sale, kill -9, the watchdog, a power cut, pos-edge doctor and the unit's security score, one line each
# (tests/service). About 2 minutes; exit 1 on any failure. Not part of `make test`.
service-check: setup
	@$(MAKE) --no-print-directory system-packages SYSTEM_PACKAGES="$(SERVICE_CHECK_PACKAGES)"
	$(BIN)/python -m tests.service

bench: setup
	$(BIN)/python bench/member_cache.py
	$(BIN)/python bench/camera_decode.py
	$(BIN)/python bench/sync.py
	$(BIN)/python bench/checkout.py

# Central under load (bench/central_load.py): 2,000 simulated tills against 1 and 2 replicas on a throw-away
# PostgreSQL cluster, then one replica killed mid-run; 4 to 10 minutes. Exit 1 on a lost, doubled or unresolved sale.
bench-central: setup
	$(BIN)/python bench/central_load.py

clean:
	rm -rf $(VENV) .demo .pytest_cache .hypothesis
