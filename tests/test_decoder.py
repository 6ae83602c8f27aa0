"""The target decoder: positions for every output, identity only within a grid, text decoding."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import pytest
import torch

from omnilatent import OmniLatentConfig, OmniLatentModel
from omnilatent.errors import ConfigError
from omnilatent.model.modalities import REGISTRY
from omnilatent.training import TrainConfig
from pipeline.tokenizer import BYTE_VOCAB_SIZE, EOS_ID, byte_detokenize, byte_tokenizer
from tests.conftest import TINY

# Image and video with the same token count (2x2 patches; 1x2x2 tubelets): the case where the
# old adapter paired image patch i with video tubelet i.
SAME_COUNT = dict(TINY, video_frames=4)


def _decoder_calls(model: OmniLatentModel) -> list[str]:
    calls: list[str] = []
    model.decoder.register_forward_hook(lambda _m, args, _out: calls.append(args[1]))
    return calls


def test_identity_only_for_the_same_modality_on_the_same_grid() -> None:
    torch.manual_seed(0)
    cfg = OmniLatentConfig(**SAME_COUNT)
    model = OmniLatentModel(cfg).eval()
    assert math.prod(REGISTRY["image"].grid(cfg, cfg.image_size)) == 4
    assert math.prod(REGISTRY["video"].grid(cfg, cfg.video_frames)) == 4
    calls = _decoder_calls(model)
    image = torch.randn(2, 3, 32, 32)
    video = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        model("image", image, "video")
        assert calls == ["video"]  # equal counts, other modality: decoded by position queries
        model("video", video, "video", target=video)
        model("image", image, "image")
        assert calls == ["video"]  # reconstruction keeps token-to-token correspondence
        model("video", video[:, :, :4], "video", target=torch.randn(2, 3, 8, 32, 32))
        assert calls == ["video", "video"]  # another length: queries again


def _caption_noise(decoding: str, targets: Callable[[], torch.Tensor], steps: int,
                   captions: int) -> torch.Tensor:
    """Train a tiny model to write ``targets()`` (B, L) from random pictures, at the trainer's
    default learning rate, then return its greedy ids (captions, 32) for new random pictures:
    the source carries no information, so whatever it writes is what its text decoding makes
    of the targets alone."""
    torch.manual_seed(0)
    cfg = OmniLatentConfig(**dict(TINY, vocab_size=BYTE_VOCAB_SIZE, text_decoding=decoding))
    model = OmniLatentModel(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=TrainConfig().lr)
    for _ in range(steps):
        target = targets()
        loss = model("image", torch.randn(len(target), 3, 32, 32), "text", target=target)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval().generate_text("image", torch.randn(captions, 3, 32, 32), 32,
                                      vocab_limit=BYTE_VOCAB_SIZE, eos_id=EOS_ID)


@pytest.mark.parametrize("decoding", ["autoregressive", "parallel"])
def test_a_model_trained_to_write_a_fixed_string_writes_it(decoding: str) -> None:
    """Text positions work: from any picture, the model learns to produce one sentence."""
    sentence = "the red circle hums"
    target = byte_tokenizer(sentence, 32).expand(4, -1)  # (4, 20) with EOS
    ids = _caption_noise(decoding, lambda: target, steps=120, captions=3)
    assert [byte_detokenize(row) for row in ids] == [sentence] * 3
    assert bool((ids[:, target.shape[1]:] == 0).all())  # padding after EOS


@pytest.mark.parametrize("width", [32, 256])
def test_text_logits_start_with_unit_spread_at_any_width(width: int) -> None:
    """Tied to embedding rows of std 0.02, unscaled logits started at std 0.02 * sqrt(width)
    (0.23 at the bench's 128): too flat a softmax to learn spelling from in a short run."""
    torch.manual_seed(0)
    model = OmniLatentModel(OmniLatentConfig(**dict(TINY, hidden_dim=width)))
    with torch.no_grad():
        logits = model("audio", torch.randn(4, 16, 24), "text", target_length=16)["output"]
    assert 0.7 < float(logits.std()) < 1.4


def test_generation_never_picks_ids_outside_the_tokenizer() -> None:
    """A model whose vocabulary is larger than its tokenizer's (the seed's 32000 with bytes)
    must not produce ids that decode to nothing."""
    torch.manual_seed(0)
    model = OmniLatentModel(OmniLatentConfig(**TINY)).eval()  # vocab 300 > 259
    with torch.no_grad():
        model.text_embed.weight[299] = 5 * model.text_embed.weight[299] / (
            model.text_embed.weight[299].norm() / 10)  # id 299 wins every argmax
        unrestricted = model.generate_text("image", torch.randn(2, 3, 32, 32), 8)
        restricted = model.generate_text("image", torch.randn(2, 3, 32, 32), 8,
                                         vocab_limit=BYTE_VOCAB_SIZE)
    assert bool((unrestricted == 299).any())
    assert int(restricted.max()) < BYTE_VOCAB_SIZE


def test_teacher_forcing_and_greedy_generation_agree() -> None:
    """The logits of the greedy loop are those of one teacher-forced pass over its own
    output: the causal mask hides every later token."""
    torch.manual_seed(0)
    model = OmniLatentModel(OmniLatentConfig(**TINY)).eval()
    audio = torch.randn(2, 16, 24)
    with torch.no_grad():
        greedy = model("audio", audio, "text", target_length=7)["output"]  # (2, 7, V)
        ids = greedy.argmax(-1)
        forced = model("audio", audio, "text", target=ids)["output"]
    torch.testing.assert_close(greedy, forced, atol=1e-5, rtol=1e-4)


def test_text_decoding_must_be_known() -> None:
    with pytest.raises(ConfigError, match="text_decoding"):
        OmniLatentConfig(**dict(TINY, text_decoding="beam"))
    with pytest.raises(ConfigError, match="decoder_layers"):
        dataclasses.replace(OmniLatentConfig(**TINY), decoder_layers=0)


def test_only_autoregressive_text_commits_to_one_likely_transcript() -> None:
    """Why text is autoregressive: when several transcripts are likely given the source,
    greedy autoregressive decoding writes one of them; parallel positions, each predicted on
    its own, take each character from whichever sentence is likeliest there, and the most
    likely first character ("a", 60%) is not that of the most likely sentence (40%)."""
    sentences = ("the red circle hums", "a red circle is humming", "a red circle hums loudly")

    def mixture() -> torch.Tensor:
        pick = torch.multinomial(torch.tensor([0.4, 0.3, 0.3]), 8, replacement=True)
        rows = [byte_tokenizer(sentences[i], 32) for i in pick.tolist()]
        target = torch.zeros(8, max(len(r) for r in rows), dtype=torch.long)  # (8, L)
        for row, ids in zip(target, rows, strict=True):
            row[:len(ids)] = ids
        return target

    outputs = {decoding: [byte_detokenize(row) for row in
                          _caption_noise(decoding, mixture, steps=200, captions=4)]
               for decoding in ("autoregressive", "parallel")}
    assert all(text in sentences for text in outputs["autoregressive"]), outputs
    assert not any(text in sentences for text in outputs["parallel"]), outputs
