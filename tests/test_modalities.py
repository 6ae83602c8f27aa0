"""One home per concept: the modality table, the padding id, the base error, the sizes."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import fields

import torch

from omnilatent.config import OmniLatentConfig
from omnilatent.model import OmniLatentModel
from omnilatent.model.modalities import REGISTRY
from omnilatent.training.run import ModelOptions
from pipeline.config import PrepareConfig
from pipeline.modalities import MODALITIES, SIZE_FIELDS, TABLE
from pipeline.shards.schema import expected_from_config


def test_the_model_reads_the_one_table() -> None:
    """The model's registry has one entry per row of the data side's table, and its
    encoder and decoder modules are exactly the registry's."""
    assert tuple(REGISTRY) == MODALITIES == tuple(row.name for row in TABLE)
    model = OmniLatentModel(OmniLatentConfig(hidden_dim=32, num_layers=1, num_heads=4))
    assert list(model.encoders) == [m for m, parts in REGISTRY.items() if parts.encoder]
    assert list(model.decoders) == [m for m, parts in REGISTRY.items() if parts.decoder]
    assert list(model.decoder.position) == list(MODALITIES)


def test_one_name_per_size() -> None:
    """The sizes prepared data fixes are called as the model calls them, on both sides."""
    model_fields = {item.name for item in fields(OmniLatentConfig)}
    assert set(SIZE_FIELDS) <= model_fields
    expected = expected_from_config(PrepareConfig())
    assert {name: expected[name] for name in SIZE_FIELDS} == {
        name: getattr(OmniLatentConfig(), name) for name in SIZE_FIELDS}


def test_model_layer_reaches_for_no_tokenizer() -> None:
    """The model, its losses and the errors take PAD_ID and the base error from the lowest
    layer, not from the tokenizer or the loader."""
    code = ("import json, sys, omnilatent.model, omnilatent.errors; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('pipeline.'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert json.loads(out) == ["pipeline.errors", "pipeline.modalities"]


def test_one_base_error_and_one_config_error() -> None:
    from omnilatent import errors as model_errors
    from pipeline import errors as pipeline_errors

    assert model_errors.ConfigError is pipeline_errors.ConfigError
    assert model_errors.OmniLatentError is pipeline_errors.OmniLatentError
    assert issubclass(pipeline_errors.PipelineError, model_errors.OmniLatentError)


def test_max_text_len_is_no_model_field_and_old_configs_load() -> None:
    """The text length is the data's (one default, in the tokenizer); a checkpoint's model
    config written before still loads, its max_text_len dropped."""
    assert "max_text_len" not in OmniLatentConfig().to_dict()
    old = {**OmniLatentConfig(hidden_dim=32, num_layers=1, num_heads=4).to_dict(),
           "max_text_len": 512}
    assert OmniLatentConfig.from_dict(old) == OmniLatentConfig(hidden_dim=32, num_layers=1,
                                                               num_heads=4)


def test_model_options_default_to_the_model_config() -> None:
    defaults = OmniLatentConfig()
    assert all(getattr(ModelOptions(), item.name) == getattr(defaults, item.name)
               for item in fields(ModelOptions))


def test_loader_collate_puts_each_modality_channels_first() -> None:
    from pipeline.loader.batches import collate
    from pipeline.loader.samples import sample_tensors

    sample = sample_tensors(torch.zeros(4, 8, 8, 3, dtype=torch.uint8).numpy(),
                            torch.zeros(16, 16, 3, dtype=torch.uint8).numpy(),
                            torch.zeros(5, 7, dtype=torch.float16).numpy(), "hi")
    batch = collate([sample, sample])
    assert batch["video"].shape == (2, 3, 4, 8, 8) and batch["image"].shape == (2, 16, 16, 3)
    assert batch["audio"].shape == (2, 5, 7) and batch["text"].shape == (2, 3)
