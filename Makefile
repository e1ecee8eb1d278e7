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

fuzz: bootstrap
	$(PY) -m pip install -q 'atheris>=2.3'
	$(PY) tests/fuzz_parser.py -max_total_time=60

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
