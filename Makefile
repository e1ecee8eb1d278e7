# One command each: set up the machine (idempotent), then run, test or benchmark.
.PHONY: bootstrap run test lint bench fuzz clean

VENV := .venv
PY := $(VENV)/bin/python
CONFIG ?=

bootstrap:
	@bash tools/bootstrap.sh

run: bootstrap
	$(VENV)/bin/clearipctl run $(if $(CONFIG),--config $(CONFIG))

lint: bootstrap
	$(VENV)/bin/ruff check control tests tools

test: bootstrap lint
	$(PY) -m pytest -q tests

bench: bootstrap
	$(PY) tools/bench_sip.py
	@# Kamailio: the reference of the call-rate anchor. As root, installed once (a no-op after).
	@[ "$$(id -u)" != 0 ] || dpkg -s kamailio >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kamailio >/dev/null || echo "bench: could not install kamailio: no relay/Kamailio ratio" >&2
	$(PY) tools/bench_calls.py $(BENCH_ARGS)
	[ "$(BENCH_FLOOD)" = 0 ] || $(PY) tools/bench_flood.py $(BENCH_FLOOD_ARGS)

fuzz: bootstrap
	$(PY) -m pip install -q 'atheris>=2.3'
	$(PY) tests/fuzz_parser.py -max_total_time=60

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
