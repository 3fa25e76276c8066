# roadie: two commands on a fresh Debian/Ubuntu machine, `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
SYSTEM_PACKAGES := $(shell grep -v '^\#' deployments/system-packages.txt)
# The tests start a throwaway PostgreSQL when none answers on 127.0.0.1:5432; that needs the server binaries.
# The Docker tests start the engine (docker.io), make a local Debian base (debootstrap) and parse docker/compose.yaml
# with Compose (docker-compose).
TEST_SYSTEM_PACKAGES := postgresql chromium chromium-driver docker.io debootstrap docker-compose
DEMO_SECONDS ?= 30

# The image: engine up (dockerd started when none answers), base ready, docker/Dockerfile built. BASE_IMAGE=local is a
# Debian bookworm base made here with debootstrap (no registry needed); BASE_IMAGE=python:3.11-slim pulls that one.
IMAGE ?= roadie:latest
BASE_IMAGE ?= local

.PHONY: install system-packages test-system-packages demo test lint bench clean image

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,lint]'
	touch $@

install: system-packages $(VENV)/.installed

system-packages:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; fi

test-system-packages:
	@missing=""; for p in $(TEST_SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; fi

demo: install
	@mkdir -p var
	$(VENV)/bin/roadie sample var/demo-track.wav --seconds $(DEMO_SECONDS)
	$(VENV)/bin/roadie ingest var/demo-track.wav --title "Demo track"

# Exit code 5 (no test collected) is a failure here: a suite that ran nothing proves nothing.
test: install test-system-packages
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing the run"; exit 1; fi; exit $$rc

# Style (ruff), types (mypy) and the layers (import-linter: nothing imports upward; see pyproject.toml).
lint: install
	$(VENV)/bin/ruff check roadie flows tasks deployments tests bench docker
	$(VENV)/bin/ruff format --check roadie flows tasks deployments tests bench docker
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

image:
	$(PYTHON) docker/build.py --tag $(IMAGE) --base $(BASE_IMAGE)

bench: install
	$(PY) bench/ingest.py

clean:
	rm -rf $(VENV) var .pytest_cache *.egg-info
