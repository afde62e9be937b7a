# Pigeon: build, run, test.
#
#   make run     start the server with the zero-config defaults (127.0.0.1, unprivileged ports)
#   make test    install the test tools if missing (Debian: apt-get) and run the test suite
#   make bench   run the benchmarks
#   make lint    ruff and mypy
#   make clean   remove caches and build output (keeps .venv and pigeon-data)
#
# Works on a fresh Debian 12 with python3 (3.11). As root nothing else is needed; as
# another user, sudo is used for apt-get when it is available.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := test

PYTHON ?= python3
VENV ?= .venv
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

# Debian packages the end-to-end tests drive; "package:file" where the file shows it is installed.
TEST_TOOLS := swaks:/usr/bin/swaks postfix:/usr/sbin/smtp-sink openssl:/usr/bin/openssl \
	curl:/usr/bin/curl dnsutils:/usr/bin/dig fetchmail:/usr/bin/fetchmail

# "sudo" when not root and sudo exists, else nothing.
SUDO := $(shell [ "$$(id -u)" = 0 ] || ! command -v sudo >/dev/null 2>&1 || echo sudo)

.PHONY: all install run test deps bench lint clean distclean

all: test

install: $(STAMP)

$(STAMP): pyproject.toml
	@if ! $(PYTHON) -c 'import ensurepip, venv' >/dev/null 2>&1; then \
		echo "make: $(PYTHON) has no venv/ensurepip; installing python3-venv"; \
		if [ "$$(id -u)" = 0 ] || [ -n "$(SUDO)" ]; then \
			$(SUDO) apt-get update -q; \
			$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
				--no-install-recommends python3-venv; \
		else \
			echo "make: install python3-venv (apt-get install python3-venv) and retry" >&2; \
			exit 1; \
		fi; \
	fi
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -U pip
	$(VENV)/bin/pip install -q -e '.[dev,speed]'
	touch $@

run: $(STAMP)
	$(VENV)/bin/pigeon serve

test: $(STAMP) deps
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

# Install the test tools that are missing. Postfix is installed only for its tools
# (smtp-sink, smtp-source, posttls-finger): debconf is preseeded with "No configuration"
# and the daemon is stopped, so nothing of it listens on port 25.
deps:
	@missing=""; \
	for item in $(TEST_TOOLS); do \
		[ -e "$${item#*:}" ] || missing="$$missing $${item%%:*}"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
		echo "make: warning: missing test tools:$$missing (no apt-get here); tests that need them are skipped" >&2; \
		exit 0; \
	fi; \
	if [ "$$(id -u)" != 0 ] && [ -z "$(SUDO)" ]; then \
		echo "make: warning: missing test tools:$$missing (not root, no sudo); tests that need them are skipped" >&2; \
		exit 0; \
	fi; \
	echo "make: installing test tools:$$missing"; \
	echo "postfix postfix/main_mailer_type select No configuration" \
		| $(SUDO) debconf-set-selections || true; \
	if ! { $(SUDO) apt-get update -q \
		&& $(SUDO) env DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -q --no-install-recommends $$missing; }; \
	then \
		echo "make: warning: could not install:$$missing; tests that need them are skipped" >&2; \
	fi; \
	case " $$missing " in \
		*" postfix "*) $(SUDO) postfix stop 2>/dev/null || true ;; \
	esac

bench: $(STAMP)
	$(VENV)/bin/python -m bench

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

clean:
	rm -rf build dist .pytest_cache .mypy_cache .ruff_cache .hypothesis src/*.egg-info
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
