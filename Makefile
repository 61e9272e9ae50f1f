# Everything a fresh machine needs: `make demo` and `make test` create .venv themselves.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint typecheck pytest docs docs-check bench clean install dev container-test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed
dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	$(BIN)/braze-export validate configs/demo.yaml
	$(BIN)/braze-export doctor configs/demo.yaml --sandbox
	$(BIN)/braze-export plan configs/demo.yaml
	$(BIN)/braze-export run configs/demo.yaml --sandbox --out demo-out
	@echo "demo files are under demo-out/ (sessions/, events/, dau/, purchases_revenue/, campaigns/, canvas/)"

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check exporter tests bench examples
	$(BIN)/ruff format --check exporter tests bench examples

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

pytest: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q

# The docs site, built strictly: a broken link or anchor fails. Offline (no plugin fetches).
MKDOCS := NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# Regenerates docs/reference/ from the code (a test fails while a committed page is stale),
# then builds the site into site/ (`$(BIN)/mkdocs serve` serves it while you edit).
docs: $(VENV)/.installed-dev
	$(BIN)/python -m exporter.docgen
	$(MKDOCS) --site-dir site

docs-check: $(VENV)/.installed-dev
	$(MKDOCS) --quiet --site-dir $(VENV)/site

test: lint typecheck pytest docs-check

# Builds the Dockerfile with buildah (no Docker engine needed) and runs the image on the demo.
container-test:
	bash scripts/container-test.sh

bench: $(VENV)/.installed-dev
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) demo-out site .mypy_cache .ruff_cache .pytest_cache
