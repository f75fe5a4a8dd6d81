# The README's commands. A fresh machine needs python3, pip and make; everything else lands in .venv.
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9

.PHONY: install demo test test-fast dev sandbox bench bench-lag screenshot clean

$(BIN)/uv:
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "uv==$(UV_VERSION)"

# the locked environment (uv.lock); uv itself is in the lock, so syncing keeps it
$(VENV)/.synced: $(BIN)/uv pyproject.toml uv.lock
	$(BIN)/uv sync --frozen --compile-bytecode --python $(BIN)/python
	$(BIN)/python -m compileall -q analytics_dagster benchmarks
	touch $@

# the dbt project's manifest, which the code location reads (parsing it at load would cost seconds)
DBT_PROJECT := analytics_dagster/dbt
DBT_MANIFEST := $(DBT_PROJECT)/target/manifest.json
$(DBT_MANIFEST): $(VENV)/.synced $(shell find $(DBT_PROJECT) -name '*.sql' -o -name '*.yml' | grep -v -e /target/ -e /logs/)
	$(BIN)/dbt parse --quiet --project-dir $(DBT_PROJECT) --profiles-dir $(DBT_PROJECT)
	touch $@

install: $(VENV)/.synced $(DBT_MANIFEST)

demo: install  ## sandbox up, every asset materialized into DuckDB, checks run, a summary
	$(BIN)/python -m analytics_dagster.demo

# The suite runs in TEST_WORKERS processes (pytest-xdist). On 2 cores 3 beat 2: a third of the
# suite's time is spent waiting (paced requests, latency, subprocesses starting), not computing
# (docs/design.md, "The test suite"). `TEST_WORKERS=0` runs in this process alone.
TEST_WORKERS ?= 3

test: install  ## the whole test suite
	$(BIN)/pytest -n $(TEST_WORKERS) --dist worksteal --durations=10

test-fast: install  ## the fast subset: everything but the end-to-end runs, and a few of those (smoke)
	$(BIN)/pytest -n $(TEST_WORKERS) --dist worksteal -m "not e2e and not slow and not browser"

dev: install  ## the sandbox on :8765 and the Dagster UI on http://127.0.0.1:3000 (daemon included)
	mkdir -p .dagster_home && cp dagster.dev.yaml .dagster_home/dagster.yaml
	$(BIN)/analytics-sandbox --port 8765 --rate-limit 1200 & sandbox=$$!; trap "kill $$sandbox" EXIT INT TERM; \
	DAGSTER_HOME=$(CURDIR)/.dagster_home SOURCES__ANALYTICS__REQUESTS_PER_MINUTE=1200 \
	SOURCES__ANALYTICS__API_KEY=$${SOURCES__ANALYTICS__API_KEY:-sandbox_api_key} \
	$(BIN)/dagster dev -h 127.0.0.1 -p 3000

sandbox: install  ## the sandbox API on 127.0.0.1:8765, as .dlt/config.toml expects
	$(BIN)/analytics-sandbox --port 8765

clean:
	rm -rf data .dagster_home

bench: install  ## the project vs plain dlt vs the bare floor on one sandbox (CUSTOMERS, LATENCY)
	$(BIN)/python benchmarks/bench.py --customers $${CUSTOMERS:-2000} --latency $${LATENCY:-0} $${BENCH_ARGS:-}

bench-lag: install  ## a change's lag to the raw tables and the models under dagster-daemon, the events sensor on (CUSTOMERS, SAMPLES)
	PYTHONPATH=$(CURDIR) $(BIN)/python benchmarks/lag.py --customers $${CUSTOMERS:-2000} --samples $${SAMPLES:-10}

screenshot: install  ## refresh docs/asset-graph.png with the browser test's own screenshot
	ANALYTICS_SCREENSHOT_DIR=$(CURDIR)/docs $(BIN)/pytest -m browser -q
