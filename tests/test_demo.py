"""`omni demo` and `omnilatent.demo`: what the seed's demo.py showed, each part checked."""

from __future__ import annotations

import math

import pytest
import torch
from typer.testing import CliRunner

from cli.app import app
from omnilatent import LatentNeuralHook, OmniLatentConfig, OmniLatentModel
from omnilatent import demo as demo_module
from omnilatent.demo import TEXT_TOKENS, demo_inputs, gradient_flow, run_demo
from tests.conftest import TINY

CONFIG = OmniLatentConfig(**TINY)


@pytest.fixture(scope="module")
def report() -> demo_module.DemoReport:
    return run_demo(CONFIG, batch=2, seed=0)


def test_self_reconstruction_keeps_each_shape_with_a_finite_loss(report) -> None:
    data = demo_inputs(CONFIG, 2)
    assert [r.modality for r in report.reconstructions] == ["text", "audio", "image", "video"]
    for r in report.reconstructions:
        assert r.input_shape == tuple(data[r.modality].shape)
        expected = (*r.input_shape, CONFIG.vocab_size) if r.modality == "text" else r.input_shape
        assert r.output_shape == expected and math.isfinite(r.loss) and r.loss > 0


def test_cross_modal_translation_has_the_target_shapes(report) -> None:
    shapes = {(t.source, t.target): t.output_shape for t in report.translations}
    assert shapes == {
        ("image", "text"): (2, TEXT_TOKENS, CONFIG.vocab_size),
        ("text", "image"): (2, 3, CONFIG.image_size, CONFIG.image_size),
        ("audio", "video"): (2, 3, CONFIG.video_frames, CONFIG.video_size, CONFIG.video_size),
    }
    assert all(t.finite for t in report.translations)
    text = next(t for t in report.translations if t.target == "text")
    assert len(text.token_ids) == 6 and all(0 <= i < CONFIG.vocab_size for i in text.token_ids)


def test_a_hook_changes_outputs_and_its_removal_restores_them(report) -> None:
    hook = report.hook
    assert hook.change > 0 and hook.restored and hook.hooks_after == ()
    assert hook.target_layers == tuple(range(CONFIG.num_layers))
    assert hook.gate == pytest.approx(1 / (1 + math.exp(4.0)))


def test_multimodal_forward_decodes_every_target_with_a_finite_loss(report) -> None:
    m = report.multimodal
    assert m.inputs == ("text", "image")
    assert m.output_shapes == {"text": (2, 32, CONFIG.vocab_size),
                               "image": (2, 3, CONFIG.image_size, CONFIG.image_size)}
    assert set(m.losses) == {"text", "image"} and all(map(math.isfinite, m.losses.values()))


def test_every_parameter_the_forward_uses_gets_a_gradient(report) -> None:
    g = report.gradients
    assert math.isfinite(g.loss)
    assert g.used == g.total == sum(1 for _ in OmniLatentModel(CONFIG).parameters())
    assert g.without_gradient == () and all(g.components.values())
    assert {"encoders.audio", "encoders.image", "encoders.video", "text_embed", "blocks",
            "decoder", "decoders.audio", "decoders.image", "decoders.video"} <= set(g.components)


def test_the_gradient_check_finds_a_dead_branch() -> None:
    """A hook whose gate is shut exactly (sigmoid(-1e4) == 0 in float32) is in the graph but
    receives no gradient: the check must name its parameters."""
    torch.manual_seed(0)
    model = OmniLatentModel(CONFIG)
    model.register_hook(LatentNeuralHook("shut", num_tokens=2, dim=CONFIG.hidden_dim,
                                         target_layers=[0], gate_bias_init=-1e4))
    g = gradient_flow(model, demo_inputs(CONFIG, 2))
    assert {"hooks.shut.tokens", "hooks.shut.gate"} <= set(g.without_gradient)
    assert g.components["hooks"] is False and g.components["blocks"] is True


def test_omni_demo_prints_each_part(monkeypatch) -> None:
    real = demo_module.run_demo
    monkeypatch.setattr(demo_module, "run_demo", lambda seed: real(CONFIG, seed=seed))
    result = CliRunner().invoke(app, ["demo"])
    assert result.exit_code == 0, result.output
    for heading in ("Self-reconstruction", "Cross-modal translation", "Latent Neural Hook",
                    "Multimodal forward", "Gradient flow"):
        assert heading in result.output
    assert "bit-identical to before ok" in result.output
    assert f"{sum(1 for _ in OmniLatentModel(CONFIG).parameters())} of" in result.output
    assert "FAILED" not in result.output and "MISSING" not in result.output
