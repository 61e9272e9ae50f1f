# Everything a fresh machine needs: `make demo` and `make test` create .venv themselves.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint typecheck pytest bench clean install dev container-test

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

test: lint typecheck pytest

# Builds the Dockerfile with buildah (no Docker engine needed) and runs the image on the demo.
container-test:
	bash scripts/container-test.sh

bench: $(VENV)/.installed-dev
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) demo-out .mypy_cache .ruff_cache .pytest_cache
