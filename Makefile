# The two commands a newcomer needs: `make demo` and `make test`. Both set themselves up.
VENV := .venv/bin
PY_SOURCES := src tests bench

.PHONY: setup setup-test demo test test-slow fuzz lint bench clean

setup:
	@scripts/setup.sh

# What only the test suite needs on top (a PostgreSQL server for the store tests).
setup-test:
	@scripts/setup.sh --test

demo: setup
	$(VENV)/veritee demo

lint: setup-test
	$(VENV)/ruff check $(PY_SOURCES)
	$(VENV)/ruff format --check $(PY_SOURCES)
	$(VENV)/mypy
	$(VENV)/python scripts/check_layers.py

test: lint
	$(VENV)/pytest -q

test-slow: setup-test
	$(VENV)/pytest -q -m slow

# Property tests with fresh random draws, several rounds (make test draws the same ones each run).
FUZZ_ROUNDS ?= 5
fuzz: setup-test
	@for i in $$(seq $(FUZZ_ROUNDS)); do \
		echo "fuzz round $$i/$(FUZZ_ROUNDS)"; \
		VERITEE_FUZZ=1 $(VENV)/pytest -q -k "fuzz or any_" || exit 1; \
	done

# setup-test: bench/events_nats.py starts Debian's nats-server.
bench: setup-test
	$(VENV)/python bench/compute.py
	$(VENV)/python bench/vtee.py
	$(VENV)/python bench/attestation.py
	$(VENV)/python bench/ratls.py
	$(VENV)/python bench/events.py
	$(VENV)/python bench/events_nats.py

clean:
	rm -rf out bench/out .pytest_cache .mypy_cache .ruff_cache
