# The two commands that matter: `make demo` and `make test`. Every target installs what it
# needs on a fresh Debian machine (apt packages only when missing, the virtualenv at .venv).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Debian packages the suite uses: the OpenSSL command line (an interop oracle), libudev
# (pyudev, crypto-module hotplug).
APT_PACKAGES := openssl libudev1

.PHONY: system venv test lint demo bench clean

system:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg -s "$$p" >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "apt: installing$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 needed"'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: system $(STAMP)

lint: venv
	$(VENV)/bin/ruff check .

test: venv lint
	$(PY) -m pytest

demo: venv
	$(VENV)/bin/appliance --help
	$(VENV)/bin/appliance selfcheck

bench: venv
	@set -e; for b in bench/[!_]*.py; do echo "== $$b"; $(PY) "$$b"; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis build *.egg-info
