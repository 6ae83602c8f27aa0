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

# The main job on an embedded default: a generated world of 8 classes -> shards with a held-out
# split -> checks -> a short curriculum through all five phases on CPU (evaluated on the held-out
# videos at its checkpoint) -> omni eval -> generated text, picture, sound and clip from videos
# the model never saw, in $(DEMO_DIR)/generated/.
DEMO_GEN = $(BIN)/omni generate $(DEMO_DIR)/train --device cpu
demo: install
	rm -rf $(DEMO_DIR)
	$(BIN)/omni demo-videos $(DEMO_DIR)/videos --count 96
	$(BIN)/omni prepare $(DEMO_DIR)/videos $(DEMO_DIR)/shards --eval-fraction 0.25
	$(BIN)/omni inspect $(DEMO_DIR)/shards --verify --samples 3
	$(BIN)/omni train --shards $(DEMO_DIR)/shards --phase-schedule default --steps 1200 \
		--batch-size 8 --dim 128 --layers 4 --heads 4 --device cpu --log-interval 100 \
		--label-pattern '^([a-z]+-[a-z]+)_s' --save-dir $(DEMO_DIR)/train
	$(BIN)/omni eval $(DEMO_DIR)/train $(DEMO_DIR)/shards --device cpu \
		--label-pattern '^([a-z]+-[a-z]+)_s'
	$(BIN)/omni demo-videos $(DEMO_DIR)/unseen --count 2 --seed 7 --duration 2
	mkdir -p $(DEMO_DIR)/generated  # omni generate does not create --out's folder
	$(DEMO_GEN) --from $$(ls $(DEMO_DIR)/unseen/*.mp4 | head -1) --to text \
		--out $(DEMO_DIR)/generated/from-video.txt
	$(DEMO_GEN) --from $$(ls $(DEMO_DIR)/unseen/*.mp4 | head -1) --to audio \
		--out $(DEMO_DIR)/generated/from-video.wav
	$(DEMO_GEN) --from $$(ls $(DEMO_DIR)/unseen/*.mp4 | tail -1) --from-modality audio \
		--to video --out $(DEMO_DIR)/generated/from-sound.mp4
	$(DEMO_GEN) --from $$(ls $(DEMO_DIR)/unseen/*.mp4 | tail -1) --from-modality audio \
		--to image --out $(DEMO_DIR)/generated/from-sound.png

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
