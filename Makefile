# The two quickstart commands: `make demo` and `make test`.
# Both create (or reuse) .venv and install fornalha into it. torch is pinned to 2.13.0 here,
# the CPU wheel this machine carries; the package metadata itself accepts torch>=2.4.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.fornalha-installed

.PHONY: install demo test lint format bench clean test-deps

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[hf,lang,dev]"
	touch $(STAMP)

install: $(STAMP)

# The whole pipeline on the built-in offline corpus: prepare -> tokenizer -> shards -> train -> eval -> samples.
demo: install
	$(VENV)/bin/fornalha pipeline --preset tiny --minutes 7.5 --out runs/demo --overwrite

# ruff, then the layer contract in pyproject.toml ([tool.importlinter]): lower layers never import higher ones.
lint: install
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples
	$(VENV)/bin/lint-imports

# System packages the tests use: Debian's chromium for the Playwright tests of the chat page (Playwright
# cannot download browsers here) and PostgreSQL for the store tests. Idempotent: installs only what is missing.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
test-deps:
	@missing=""; command -v chromium >/dev/null 2>&1 || missing="chromium"; \
	 ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	 if [ -n "$$missing" ]; then $(SUDO) apt-get update -qq && \
	   DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; fi

# Lint, then the whole test suite.
test: lint
	$(VENV)/bin/python -m pytest -n 2 --dist loadgroup -q

format: install
	$(VENV)/bin/ruff format src tests benchmarks
	$(VENV)/bin/ruff check --fix src tests benchmarks

clean:
	rm -rf runs .pytest_cache .ruff_cache
