# The two commands that matter: `make demo` and `make test`. Every target installs what it
# needs on a fresh Debian machine (apt packages only when missing, the virtualenv at .venv).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Debian packages the suite uses: the OpenSSL command line (an interop oracle), libudev
# (pyudev, crypto-module hotplug), Chromium (the browser tests of the web UI, driven by
# Playwright with executable_path; never `playwright install`) and a CJK system font (the UI
# is in Chinese; it loads no web fonts).
APT_PACKAGES := openssl libudev1 chromium fonts-wqy-microhei

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

# The simulated service hall on this machine (test fixtures): open the printed URL
# (http://127.0.0.1:8080, the PAD at /pad); Ctrl-C stops it and removes its files.
demo: venv
	$(VENV)/bin/appliance selfcheck
	$(VENV)/bin/appliance run --sim

bench: venv
	@set -e; for b in bench/[!_]*.py; do echo "== $$b"; $(PY) "$$b"; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis build *.egg-info
