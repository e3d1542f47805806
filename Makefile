# Quick start: `make demo` runs the demo sync; `make test` runs the tests (installing what they need).
VENV ?= .venv
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test system-deps bench

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

system-deps:
	@command -v redis-server >/dev/null || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q redis-server; }

demo: $(VENV)/.installed
	$(VENV)/bin/stocksync demo

test: system-deps $(VENV)/.installed
	$(VENV)/bin/pytest

bench: system-deps $(VENV)/.installed
	$(VENV)/bin/python bench/bulk_sync.py
