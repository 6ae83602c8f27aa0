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
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check omnilatent pipeline cli tests bench

ci: lint test

# The main job on an embedded default: generated footage -> shards -> checks -> a short
# curriculum through all five phases, on CPU.
demo: install
	rm -rf $(DEMO_DIR)
	$(BIN)/omni demo-videos $(DEMO_DIR)/videos
	$(BIN)/omni prepare $(DEMO_DIR)/videos $(DEMO_DIR)/shards
	$(BIN)/omni inspect $(DEMO_DIR)/shards --verify --samples 3
	$(BIN)/omni train --shards $(DEMO_DIR)/shards --phase-schedule default --steps 60 \
		--batch-size 4 --dim 64 --layers 2 --heads 4 --device cpu --log-interval 10 \
		--save-dir $(DEMO_DIR)/train

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
