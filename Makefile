# Every target installs what it needs into .venv first: a fresh clone needs only
# python3 and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
EXAMPLE := examples/wsgiproxy-apikey
STAMP  := $(VENV)/.installed-$(shell cat requirements.txt requirements-runtime.txt $(EXAMPLE)/pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install test-tools run gunicorn check-config demo test fuzz test-matrix lint load-test bench bench-tools cache-tests docker-build docs clean

# The example filter distribution is installed as a team installs its own; its
# dependency, wsgiproxy, is this checkout, on the path already (--no-deps).
$(STAMP): requirements.txt requirements-runtime.txt $(EXAMPLE)/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python scripts/preflight_pth.py  # gunicorn's WEB_CONCURRENCY checked first
	$(BIN)/python -m pip install --quiet --no-deps -e $(EXAMPLE)
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

run: install            ## the proxy on gevent's pywsgi (routes: CONFIGURATION_FILENAME)
	$(BIN)/python -m wsgiproxy

gunicorn: install       ## the proxy under gunicorn (reads ./gunicorn.conf.py)
	$(BIN)/gunicorn -k gevent wsgiproxy:app

check-config: install   ## check the settings and the routes file, then exit
	$(BIN)/python -m wsgiproxy --check-config

demo: install           ## three sample backends + the proxy; Ctrl-C stops them all
	$(BIN)/python scripts/demo.py

test-tools:             # Prometheus, promtool, Alertmanager, amtool (Debian) for the monitoring tests
	@if command -v promtool >/dev/null && command -v prometheus >/dev/null \
	    && command -v amtool >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing prometheus, prometheus-alertmanager (Debian) for the monitoring tests"; \
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
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
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
