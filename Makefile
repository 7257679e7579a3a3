# Tollgate: `make run` starts the whole local stack, `make test` runs the test suite.
# Both create the virtualenv and install pinned dependencies on first use.

PYTHON ?= $(shell for p in python3.12 python3.11 python3; do \
	if $$p -c 'import sys; sys.exit(not ((3, 11) <= sys.version_info[:2] <= (3, 12)))' >/dev/null 2>&1; then \
	echo $$p; break; fi; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test install browser lint typecheck clean-data help

help:
	@echo "make run    - start PostgreSQL, Redis, the gateway, a Celery worker and beat"
	@echo "make test   - run the whole test suite against real PostgreSQL and Redis"
	@echo "make lint   - ruff; make typecheck - mypy"

$(STAMP): pyproject.toml requirements.lock
	@test -n "$(PYTHON)" || { echo "Python 3.11 or 3.12 is required"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/python -m gateway.devstack run

# The browser tests drive Debian's Chromium (never a browser downloaded by the test tool).
# Installed here when missing and this runs as root on a Debian-like system; otherwise
# those tests are skipped with the reason.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium for the browser tests"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 || \
	    { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	    echo "could not install chromium: browser tests will be skipped"; \
	  else echo "chromium not found: browser tests will be skipped (apt-get install chromium)"; fi; }

test: $(STAMP) browser
	$(BIN)/python -m gateway.devstack exec --ephemeral -- $(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/python -m gateway.devstack exec --ephemeral -- $(BIN)/mypy gateway policies alerts audit

clean-data:
	rm -rf .tollgate
