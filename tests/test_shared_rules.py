"""Rules the data pipeline and the model library share, defined once: the padding id and how
texts are padded, what a bad setting is, and each epoch's shuffle."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import pipeline.errors
from omnilatent import OmniLatentConfig
from omnilatent.errors import OmniLatentError
from omnilatent.model.modalities import text_loss
from omnilatent.training.data import ResumableLoader, collate_multimodal, epoch_generator
from pipeline.loader.batches import collate
from pipeline.tokenizer import byte_tokenizer


def test_the_text_loss_skips_exactly_what_the_loaders_pad_with() -> None:
    """Tokenizer -> either collate -> the model's text loss: the padded positions of the
    shorter text count for nothing, so the loss is the mean over the real tokens only."""
    texts = [byte_tokenizer("a longer transcript", 64), byte_tokenizer("hi", 64)]
    shard_batch = collate([{"text": t, "__key__": str(i), "meta": {}}
                           for i, t in enumerate(texts)])
    train_batch = collate_multimodal([{"text": t} for t in texts])
    assert torch.equal(shard_batch["text"], train_batch["text"])
    assert shard_batch["has_text"].tolist() == [True, True]

    target = train_batch["text"]  # (2, L): row 1 is mostly padding
    logits = torch.randn(*target.shape, 300, generator=torch.Generator().manual_seed(0))
    real = torch.cat([F.cross_entropy(logits[row, : len(t)], t, reduction="none")
                      for row, t in enumerate(texts)])  # one loss per real token
    assert torch.allclose(text_loss(logits, target), real.mean())


def test_a_batch_of_empty_texts_is_one_column_of_padding() -> None:
    empty = torch.zeros(0, dtype=torch.long)
    batch = collate([{"text": empty, "__key__": "k", "meta": {}}])
    assert batch["text"].shape == (1, 1) and batch["has_text"].tolist() == [False]
    assert torch.equal(collate_multimodal([{"text": empty}])["text"], batch["text"])
    # all padding: a zero loss that still reaches the logits (no NaN from an empty mean)
    logits = torch.zeros(1, 1, 300, requires_grad=True)
    loss = text_loss(logits, batch["text"])
    loss.backward()
    assert float(loss.detach()) == 0.0 and logits.grad is not None


def test_one_config_error_for_both_libraries() -> None:
    """A bad model setting is caught as the pipeline's ConfigError, and is still one of the
    model library's own errors."""
    with pytest.raises(pipeline.errors.ConfigError, match="hidden_dim") as caught:
        OmniLatentConfig(hidden_dim=30, num_heads=4)
    assert isinstance(caught.value, OmniLatentError)
    assert isinstance(caught.value, pipeline.errors.PipelineError)


def test_each_epoch_has_its_own_order_and_keeps_it() -> None:
    """The golden formula: a checkpoint's (seed, epoch) must give the order it was trained
    in, so a resumed run draws what the uninterrupted one would have."""
    expected = torch.randperm(12, generator=torch.Generator().manual_seed(3 * 100_003 + 2))
    assert torch.equal(torch.randperm(12, generator=epoch_generator(3, 2)), expected)
    orders = {tuple(torch.randperm(12, generator=epoch_generator(3, e)).tolist())
              for e in range(3)}
    assert len(orders) == 3

    loader = ResumableLoader(list(range(12)), batch_size=12, seed=3,
                             collate_fn=lambda samples: list(samples))
    loader.epoch = 2
    (batch,) = list(loader)
    assert batch == expected.tolist()
