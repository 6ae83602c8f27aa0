# Every target works on a fresh clone with only python3 and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo-out

.PHONY: install test lint ci demo clean

install: $(STAMP)

# Reinstall only when the package definition changes.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check omnilatent pipeline cli tests bench

ci: lint test

demo: install
	rm -rf $(DEMO_DIR)
	$(BIN)/omni train --synthetic --steps 48 --dim 64 --layers 2 --heads 4 --device cpu \
		--save-dir $(DEMO_DIR)/train

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
