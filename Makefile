# The README's commands. A fresh machine needs python3, pip and make; everything else lands in .venv.
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9

.PHONY: install demo test test-fast dev sandbox bench clean

$(BIN)/uv:
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "uv==$(UV_VERSION)"

# the locked environment (uv.lock); uv itself is in the lock, so syncing keeps it
$(VENV)/.synced: $(BIN)/uv pyproject.toml uv.lock
	$(BIN)/uv sync --frozen --python $(BIN)/python
	touch $@

install: $(VENV)/.synced

demo: install  ## sandbox up, every asset materialized into DuckDB, checks run, a summary
	$(BIN)/python -m analytics_dagster.demo

test: install  ## the whole test suite
	$(BIN)/pytest

sandbox: install  ## the sandbox API on 127.0.0.1:8765, as .dlt/config.toml expects
	$(BIN)/analytics-sandbox --port 8765

clean:
	rm -rf data .dagster_home
