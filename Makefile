# One command each: set up the machine (idempotent), then run, test or benchmark.
# bench-overload and soak are long load runs of their own, part of neither test nor bench.
.PHONY: bootstrap run test test-pure lint bench bench-overload soak fuzz install clean

VENV := .venv
PY := $(VENV)/bin/python
CONFIG ?=

bootstrap:
	@bash tools/bootstrap.sh

run: bootstrap
	$(VENV)/bin/clearipctl run $(if $(CONFIG),--config $(CONFIG))

lint: bootstrap
	$(VENV)/bin/ruff check control lab tests tools

# The whole suite on the compiled build, then the sans-IO core and the call flows on the pure
# one (the fallback; the tests that patch methods of compiled classes run there).
PURE_TESTS = tests/test_message.py tests/test_uri.py tests/test_framing.py tests/test_transaction.py \
	tests/test_torture.py tests/test_properties.py tests/test_build.py tests/test_core_*.py \
	tests/test_e2e_flows.py tests/test_run_defaults.py

test: bootstrap lint
	$(PY) tools/build_compiled.py --expect compiled
	$(PY) -m pytest -q tests
	CLEARIP_BUILD=pure $(PY) tools/build_compiled.py --expect pure
	CLEARIP_BUILD=pure $(PY) -m pytest -q $(PURE_TESTS)

# The whole suite on the pure-Python build.
test-pure: bootstrap lint
	CLEARIP_BUILD=pure $(PY) -m pytest -q tests

# Kamailio: the reference of the call-rate anchor. As root, installed once (a no-op after).
KAMAILIO = [ "$$(id -u)" != 0 ] || dpkg -s kamailio >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kamailio >/dev/null || echo "$@: could not install kamailio: no Kamailio figures" >&2

# Call rate: three whole runs, each with the relay and Kamailio back to back (~40 min), then
# the relay with one worker (how the knee scales with cores, BENCH_SCALING=0 skips it), then
# the untrusted flood (BENCH_FLOOD=0 skips it). BENCH_ARGS replaces the call-rate options.
BENCH_ARGS ?= --runs 3 --seconds 10 --repeats 1
bench: bootstrap
	$(PY) tools/bench_sip.py
	$(PY) tools/bench_core.py
	@$(KAMAILIO)
	$(PY) tools/bench_calls.py $(BENCH_ARGS)
	[ "$(BENCH_SCALING)" = 0 ] || $(PY) tools/bench_calls.py --no-kamailio --workers 1 --seconds 10 --repeats 1
	[ "$(BENCH_FLOOD)" = 0 ] || $(PY) tools/bench_flood.py $(BENCH_FLOOD_ARGS)

# The relay and Kamailio at twice the knee for 30 s, then the knee for 5 s (about 2 minutes):
# make bench-overload OVERLOAD_ARGS="--knee 900" (the knee from bench_calls.py).
bench-overload: bootstrap
	@$(KAMAILIO)
	$(PY) tools/bench_overload.py $(OVERLOAD_ARGS)

# The relay for 30 minutes at half the knee, ok, failover and 603 calls at once: memory, fds,
# tables and failures each minute (SOAK_ARGS="--knee 900" or "--rate 450 --minutes 60").
soak: bootstrap
	$(PY) tools/soak.py $(SOAK_ARGS)

fuzz: bootstrap
	$(PY) -m pip install -q 'atheris>=2.3'
	$(PY) tests/fuzz_parser.py -max_total_time=60

# The service: the unit (pointing at this checkout's .venv) and, if none exists yet, the default
# config. DESTDIR installs into a staging root (tests use it); systemd is told when it runs.
DESTDIR ?=
install: bootstrap
	install -d $(DESTDIR)/etc/systemd/system $(DESTDIR)/etc/clearip
	sed -e 's|@CLEARIPCTL@|$(CURDIR)/$(VENV)/bin/clearipctl|g' -e 's|@DOCDIR@|$(CURDIR)|g' \
		tools/systemd/clearip.service.in > $(DESTDIR)/etc/systemd/system/clearip.service
	[ -e $(DESTDIR)/etc/clearip/proxy.toml ] || install -m 0640 tools/proxy.toml $(DESTDIR)/etc/clearip/proxy.toml
	@[ -n "$(DESTDIR)" ] || ! [ -d /run/systemd/system ] || systemctl daemon-reload
	@echo "installed: systemctl enable --now clearip (config: /etc/clearip/proxy.toml)"

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
