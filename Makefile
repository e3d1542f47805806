# Quick start: `make demo` runs the demo sync; `make test` runs the tests (installing what they need).
VENV ?= .venv
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test system-deps bench

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

# Debian packages whose programs the tests start for real (each package's program has its name):
# redis-server, prometheus, which scrapes a test fleet, chromium, which the console's browser tests drive,
# and npm (with node), which installs and runs Prism.
SYSTEM_PACKAGES := redis-server prometheus chromium npm

# Prism checks the Refurbed sandbox against its vendored Swagger (tests/test_refurbed_prism.py); the
# lock file pins it and everything it pulls in.
NODE_TOOLS := tests/node/node_modules/.installed
$(NODE_TOOLS): tests/node/package.json tests/node/package-lock.json
	cd tests/node && npm ci --no-audit --no-fund
	touch $@

system-deps:
	@missing=""; for package in $(SYSTEM_PACKAGES); do command -v $$package >/dev/null || missing="$$missing $$package"; done; \
	[ -z "$$missing" ] || { $(SUDO) apt-get update -q && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; }

demo: $(VENV)/.installed
	$(VENV)/bin/stocksync demo

test: system-deps $(VENV)/.installed $(NODE_TOOLS)
	$(VENV)/bin/lint-imports
	$(VENV)/bin/pytest

bench: system-deps $(VENV)/.installed
	$(VENV)/bin/python bench/bulk_sync.py
	$(VENV)/bin/python bench/accounts_sync.py
