from __future__ import annotations

import dataclasses

import pytest
import torch

from omnilatent import MODALITIES, OmniLatentConfig, OmniLatentModel
from omnilatent.errors import ConfigError
from omnilatent.model.attention import Attention
from omnilatent.model.layers import RMSNorm, rope_tables
from omnilatent.model.modalities import text_loss
from tests.conftest import TINY, make_inputs


def test_default_config_is_about_156m_and_quick_start_shapes() -> None:
    torch.manual_seed(0)
    model = OmniLatentModel(OmniLatentConfig()).eval()
    assert 150e6 < model.num_parameters() < 160e6
    image = torch.randn(1, 3, 224, 224)
    tokens = torch.randint(1, 32000, (1, 64))
    with torch.no_grad():
        # without a target, text is generated greedily (one step per position): 12 here
        assert model("image", image, "text", target_length=12)["output"].shape == (1, 12, 32000)
        assert model("text", tokens, "image")["output"].shape == (1, 3, 224, 224)
        assert model("audio", torch.randn(1, 128, 200), "video")["output"].shape == (
            1, 3, 16, 112, 112)
        assert model("video", torch.randn(1, 3, 16, 112, 112), "audio")["output"].shape == (
            1, 128, 200)
        rec = model.reconstruct("image", image)
        assert rec["output"].shape == image.shape and torch.isfinite(rec["loss"])
        multi = model.forward_multimodal(inputs={"text": tokens, "image": image},
                                         target_modalities=["text", "image"],
                                         target_lengths={"text": 5})
        assert multi["outputs"]["image"].shape == (1, 3, 224, 224)
        assert multi["outputs"]["text"].shape == (1, 5, 32000)


@pytest.mark.parametrize("source", MODALITIES)
@pytest.mark.parametrize("target", MODALITIES)
def test_all_16_pairs_forward_loss_and_finite_grads(tiny_model, tiny_config, source,
                                                    target) -> None:
    x = make_inputs(tiny_config)
    out = tiny_model(source, x[source], target, target=x[target])
    expected = {
        "text": (2, 7, tiny_config.vocab_size),
        "audio": (2, tiny_config.n_mels, tiny_config.audio_frames),
        "image": (2, 3, 32, 32),
        "video": (2, 3, 8, 32, 32),
    }[target]
    assert tuple(out["output"].shape) == expected
    assert torch.isfinite(out["loss"]) and out["loss"].item() > 0
    out["loss"].backward()
    grads = [p.grad for p in tiny_model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_default_output_lengths_without_target(tiny_model, tiny_config) -> None:
    x = make_inputs(tiny_config)
    with torch.no_grad():
        assert tiny_model("image", x["image"], "text")["output"].shape[1] == 4  # 2x2 patches
        assert tiny_model("image", x["image"], "text", target_length=5)["output"].shape[1] == 5
        multi = tiny_model.forward_multimodal({"text": x["text"], "image": x["image"]},
                                              ["text"])["outputs"]["text"]
        assert multi.shape[1] == 7 + 4  # every content token of every input
        audio = tiny_model("text", x["text"], "audio")["output"]
        assert audio.shape == (2, tiny_config.n_mels, tiny_config.audio_frames)
        odd = tiny_model("audio", torch.randn(2, tiny_config.n_mels, 21), "audio",
                         target=torch.randn(2, tiny_config.n_mels, 21))
        assert odd["output"].shape[-1] == 21


def test_no_dead_parameters_across_all_pairs(tiny_model, tiny_config) -> None:
    """Every parameter gets a non-zero gradient from at least one of the 16 pairs."""
    x = make_inputs(tiny_config)
    for source in MODALITIES:
        for target in MODALITIES:
            tiny_model(source, x[source], target, target=x[target])["loss"].backward()
    dead = [n for n, p in tiny_model.named_parameters()
            if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert dead == []


def test_text_padding_is_masked(tiny_model, tiny_config) -> None:
    """Extra padding at the end must not change outputs at the real positions."""
    tiny_model.eval()
    tokens = torch.randint(1, tiny_config.vocab_size, (1, 6))
    padded = torch.cat([tokens, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    with torch.no_grad():
        a = tiny_model("text", tokens, "text")["output"]
        b = tiny_model("text", padded, "text", target_length=6)["output"]
        c = tiny_model("text", padded, "text")["output"][:, :6]
    torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-4)
    assert b.shape == a.shape


def test_text_loss_ignores_padding_and_all_padding_is_zero(tiny_model, tiny_config) -> None:
    x = make_inputs(tiny_config)
    empty = torch.zeros_like(x["text"])
    out = tiny_model("image", x["image"], "text", target=empty)
    assert out["loss"].item() == 0.0
    out["loss"].backward()  # graph stays connected


def test_text_loss_is_the_mean_over_real_tokens() -> None:
    logits = torch.randn(2, 5, 11)  # (B, L, V)
    labels = torch.tensor([[3, 4, 0, 0, 0], [5, 6, 7, 8, 0]])  # 6 real tokens
    real = labels != 0
    expected = torch.nn.functional.cross_entropy(logits[real], labels[real])
    torch.testing.assert_close(text_loss(logits, labels), expected)


def test_gradient_checkpointing_gives_same_loss_and_grads(tiny_config) -> None:
    x = make_inputs(tiny_config)
    results = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = OmniLatentModel(dataclasses.replace(tiny_config, gradient_checkpointing=ckpt))
        model.train()
        loss = model("video", x["video"], "text", target=x["text"])["loss"]
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                        if p.grad is not None}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_a, loss_b, rtol=0, atol=0)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-6, atol=1e-7)


def test_loss_decreases_on_a_fixed_batch(tiny_model, tiny_config) -> None:
    x = make_inputs(tiny_config)
    optimizer = torch.optim.AdamW(tiny_model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = tiny_model("image", x["image"], "text", target=x["text"])["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"hidden_dim": 0}, "hidden_dim"),
        ({"hidden_dim": 30, "num_heads": 4}, "hidden_dim"),
        ({"num_layers": -1}, "num_layers"),
        ({"image_size": 100}, "image_size"),
        ({"video_frames": 6}, "video_frames"),
        ({"dropout": 1.5}, "dropout"),
        ({"vocab_size": 1}, "vocab_size"),
        ({"hidden_dim": 36, "num_heads": 4}, "head dim"),
    ],
)
def test_config_validation_names_the_field(overrides, field) -> None:
    with pytest.raises(ConfigError, match=field):
        OmniLatentConfig(**{**TINY, **overrides})


def test_config_round_trips_and_rejects_unknown_fields(tiny_config) -> None:
    assert OmniLatentConfig.from_dict(tiny_config.to_dict()) == tiny_config
    with pytest.raises(ConfigError, match="bogus"):
        OmniLatentConfig.from_dict({**tiny_config.to_dict(), "bogus": 1})


@pytest.mark.parametrize(
    ("modality", "shape", "dtype"),
    [("image", (1, 3, 31, 32), torch.float32), ("text", (1, 4), torch.float32),
     ("video", (1, 3, 7, 32, 32), torch.float32), ("audio", (1, 3, 24), torch.float32)],
)
def test_bad_input_shapes_raise_clear_errors(tiny_model, modality, shape, dtype) -> None:
    with pytest.raises(ConfigError, match=f"{modality} input must have shape"):
        tiny_model(modality, torch.zeros(shape, dtype=dtype), "text")


def test_unknown_modality_is_rejected(tiny_model, tiny_config) -> None:
    x = make_inputs(tiny_config)
    with pytest.raises(ConfigError, match="unknown"):
        tiny_model("smell", x["image"], "text")
    with pytest.raises(ConfigError, match="unknown target"):
        tiny_model("image", x["image"], "smell")


def test_rope_tables_are_cached_unsaved_and_change_nothing(tiny_model, tiny_config) -> None:
    tiny_model.eval()
    x = make_inputs(tiny_config)
    with torch.no_grad():
        first = tiny_model("image", x["image"], "text", target=x["text"])["output"]
        cached = tiny_model.rope_cos
        tiny_model("video", x["video"], "audio", target=x["audio"])  # another length
        again = tiny_model("image", x["image"], "text", target=x["text"])["output"]
    assert cached.numel() > 0 and tiny_model.rope_cos.shape[0] >= cached.shape[0]
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    assert not any(name.startswith("rope_") for name in tiny_model.state_dict())
    cos, sin = rope_tables(5, tiny_config.head_dim, tiny_config.rope_theta, torch.device("cpu"))
    torch.testing.assert_close(tiny_model._rope(5, torch.device("cpu")), (cos, sin), rtol=0,
                               atol=0)


def test_norms_keep_the_activation_dtype_under_autocast() -> None:
    """Issue 19, §4: under bf16 autocast the fp32 norm weight must not promote the output,
    so q and k leave QK-norm in bf16 like v; without autocast fp32 stays fp32."""
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(0))
    norm, attn = RMSNorm(32), Attention(32, 4, 1e-6, 0.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert norm(x.bfloat16()).dtype == torch.bfloat16
        q, k, v = attn._heads(x)
        assert v.dtype == torch.bfloat16 and q.dtype == k.dtype == v.dtype
    assert norm(x).dtype == torch.float32
