# Every target installs what it needs into .venv first: a fresh clone needs only
# python3 and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
EXAMPLE := examples/wsgiproxy-apikey
STAMP  := $(VENV)/.installed-$(shell cat requirements.txt requirements-runtime.txt $(EXAMPLE)/pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install test-tools run gunicorn check-config demo test fuzz test-matrix lint load-test bench bench-tools cache-tests docker-build docs clean

# The example filter distribution is installed as a team installs its own; what it
# needs, wsgiproxy, is this checkout, on the path already (--no-deps).
$(STAMP): requirements.txt requirements-runtime.txt $(EXAMPLE)/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python scripts/preflight_pth.py  # gunicorn's WEB_CONCURRENCY checked first
	$(BIN)/python -m pip install --quiet --no-deps -e $(EXAMPLE)
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

# make demo needs only what the proxy runs on (requirements-runtime.txt, as the image
# installs); a full install above has it already.
RUNTIME_STAMP := $(VENV)/.runtime-$(shell cat requirements-runtime.txt | cksum | cut -d' ' -f1)
$(RUNTIME_STAMP): requirements-runtime.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || \
	    { echo "make: cannot create $(VENV) with $(PYTHON) -m venv (Debian: apt-get install python3-venv)"; exit 1; }
	@test -f $(STAMP) || { echo "installing the run-time requirements into $(VENV)"; \
	    $(BIN)/python -m pip install --quiet -r requirements-runtime.txt; }
	@rm -f $(VENV)/.runtime-* && touch $@

run: install            ## the proxy on gevent's pywsgi (routes: CONFIGURATION_FILENAME)
	$(BIN)/python -m wsgiproxy

gunicorn: install       ## the proxy under gunicorn (reads ./gunicorn.conf.py)
	$(BIN)/gunicorn -k gevent wsgiproxy:app

check-config: install   ## check the settings and the routes file, then exit
	$(BIN)/python -m wsgiproxy --check-config

demo: $(RUNTIME_STAMP)  ## a sample backend per host of the routes file + the proxy (docs/try-it.md)
	$(BIN)/python scripts/demo.py

# System packages are installed only as root with apt-get, always said first, and never
# with NO_SYSTEM_PACKAGES=1 (the tests that need them are then skipped).
test-tools:             # Prometheus, promtool, Alertmanager, amtool (Debian) for the monitoring tests
	@if command -v promtool >/dev/null && command -v prometheus >/dev/null \
	    && command -v amtool >/dev/null; then :; \
	elif [ -n "$(NO_SYSTEM_PACKAGES)" ]; then \
	    echo "make test: no prometheus/promtool/amtool, NO_SYSTEM_PACKAGES set: their tests will be skipped"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "make test: installing the Debian packages prometheus and prometheus-alertmanager" \
	        "with apt-get (as root) for the monitoring tests; NO_SYSTEM_PACKAGES=1 skips this"; \
	    apt-get install -y -q prometheus prometheus-alertmanager >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null && \
	      apt-get install -y -q prometheus prometheus-alertmanager >/dev/null; } || \
	    echo "could not install them: their tests will be skipped"; \
	else echo "no prometheus/promtool/amtool: their tests will be skipped" \
	    "(apt-get install prometheus prometheus-alertmanager)"; fi

test: install test-tools  ## every test (real sockets on loopback)
	$(BIN)/python -m pytest

fuzz: install           ## long property-based fuzzing of both servers' parsers (Hypothesis)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest tests/test_fuzz.py -q -o timeout=0 -p no:randomly

test-matrix: install  ## the suite on Python 3.11-3.13 (nox; outside CI)
	$(BIN)/nox -- $(ARGS)

lint: install           ## ruff and mypy --strict
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/mypy --strict $(EXAMPLE)/src  # what a filter author gets from the API's types

load-test: install      ## Locust headless: LOAD_TEST_USERS (20) for LOAD_TEST_DURATION (60s)
	$(BIN)/python scripts/load_test.py

bench-tools:            # nginx, its echo module and wrk: Debian packages
	@if { command -v nginx || test -x /usr/sbin/nginx; } >/dev/null 2>&1 && command -v wrk >/dev/null \
	    && test -f /usr/lib/nginx/modules/ngx_http_echo_module.so; then :; \
	elif [ -z "$(NO_SYSTEM_PACKAGES)" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "make bench: installing the Debian packages nginx, wrk and libnginx-mod-http-echo" \
	        "with apt-get (as root); NO_SYSTEM_PACKAGES=1 skips this"; \
	    apt-get install -y -q nginx wrk libnginx-mod-http-echo >/dev/null || \
	    { apt-get update -q >/dev/null && apt-get install -y -q nginx wrk libnginx-mod-http-echo >/dev/null; }; \
	else echo "make bench needs: sudo apt-get install -y nginx wrk libnginx-mod-http-echo"; exit 1; fi

bench: install bench-tools  ## wrk: wsgiproxy, its ceiling and nginx in one run -> reports/bench.{json,png}
	PATH="$$PATH:/usr/sbin" $(BIN)/python bench/bench.py $(BENCH_ARGS)

cache-tests: install      ## the public HTTP cache test suite against the proxy (needs node, npm)
	$(BIN)/python scripts/cache_tests.py

docker-build:           ## the container image (needs a Docker engine)
	@docker info >/dev/null 2>&1 || { echo "docker-build: no Docker engine here; the Dockerfile is checked by hadolint in make test"; exit 1; }
	docker build -t wsgiproxy:0.1.0 .

docs: install            ## the manual as a site in site/ (mkdocs build --strict)
	$(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache reports .cache-tests site
