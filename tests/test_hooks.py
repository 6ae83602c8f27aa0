from __future__ import annotations

import pytest
import torch

from omnilatent import LatentNeuralHook, OmniLatentModel
from omnilatent.errors import HookError
from tests.conftest import make_inputs


def _out(model, x, source="image", target="image"):
    return model(source, x[source], target)


def test_gate_starts_near_silent_and_change_is_small_and_scales_with_gate(tiny_model,
                                                                          tiny_config) -> None:
    tiny_model.eval()
    x = make_inputs(tiny_config)
    with torch.no_grad():
        base = _out(tiny_model, x)["output"]
        hook = tiny_model.register_hook(LatentNeuralHook("h", 4, tiny_config.hidden_dim, [0, 1]))
        assert abs(hook.gate_value().item() - torch.sigmoid(torch.tensor(-4.0)).item()) < 1e-7
        delta_4 = (_out(tiny_model, x)["output"] - base).abs().max().item()
        hook.gate.fill_(-8.0)
        delta_8 = (_out(tiny_model, x)["output"] - base).abs().max().item()
        hook.gate.fill_(4.0)
        delta_open = (_out(tiny_model, x)["output"] - base).abs().max().item()
    scale = base.abs().max().item()
    assert 0 < delta_4 < 0.05 * scale  # small and bounded at initialisation
    assert delta_8 < delta_4 / 10  # proportional to sigmoid(gate): ~e^-4 smaller
    assert delta_open > 10 * delta_4  # an open gate matters


def test_removal_restores_outputs_bit_for_bit(tiny_model, tiny_config) -> None:
    tiny_model.eval()
    x = make_inputs(tiny_config)
    keys_before = set(tiny_model.state_dict())
    n_before = tiny_model.num_parameters()
    with torch.no_grad():
        base = {m: _out(tiny_model, x, m, "text")["output"] for m in ("text", "audio", "video")}
        tiny_model.register_hook(LatentNeuralHook("a", 3, tiny_config.hidden_dim, [0]))
        tiny_model.register_hook(LatentNeuralHook("b", 2, tiny_config.hidden_dim, [1]))
        tiny_model.hooks["a"].gate.fill_(3.0)
        hooked = _out(tiny_model, x, "text", "text")["output"]
        assert not torch.equal(hooked, base["text"])
        assert tiny_model.num_parameters() > n_before
        removed = tiny_model.remove_hook("a")
        tiny_model.remove_hook("b")
        after = {m: _out(tiny_model, x, m, "text")["output"] for m in ("text", "audio", "video")}
    assert isinstance(removed, LatentNeuralHook)
    assert all(torch.equal(base[m], after[m]) for m in base)
    assert set(tiny_model.state_dict()) == keys_before
    assert tiny_model.num_parameters() == n_before


def test_tokens_and_gate_get_nonzero_gradients_at_init(tiny_model, tiny_config) -> None:
    x = make_inputs(tiny_config)
    hook = tiny_model.register_hook(LatentNeuralHook("h", 4, tiny_config.hidden_dim, [0, 1]))
    tiny_model("video", x["video"], "audio", target=x["audio"])["loss"].backward()
    assert hook.tokens.grad is not None and hook.tokens.grad.abs().sum() > 0
    assert hook.gate.grad is not None and hook.gate.grad.abs().item() > 0
    for name, p in hook.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_hooks_are_participatory_and_bidirectional(tiny_model, tiny_config) -> None:
    """Hook state reads the content; content reads the hook tokens."""
    tiny_model.eval()
    x = make_inputs(tiny_config)
    hook = tiny_model.register_hook(LatentNeuralHook("h", 4, tiny_config.hidden_dim, [0]))
    with torch.no_grad():
        state_a = _out(tiny_model, x)["hook_states"]["h"]
        x2 = dict(x, image=x["image"] + 1.0)
        state_b = _out(tiny_model, x2)["hook_states"]["h"]
        assert state_a.shape == (2, 4, tiny_config.hidden_dim)
        assert not torch.allclose(state_a, state_b)  # reads content
        out_a = _out(tiny_model, x)["output"]
        hook.tokens.add_(0.5)
        out_b = _out(tiny_model, x)["output"]
        assert not torch.allclose(out_a, out_b)  # content reads the hook


def test_state_persists_across_layers_with_optional_transform(tiny_config) -> None:
    torch.manual_seed(0)
    model = OmniLatentModel(tiny_config).eval()
    x = make_inputs(tiny_config)
    dim = tiny_config.hidden_dim
    torch.manual_seed(1)
    both = LatentNeuralHook("h", 4, dim, [0, 1])
    torch.manual_seed(1)
    last_only = LatentNeuralHook("h", 4, dim, [1])
    with torch.no_grad():
        model.register_hook(both)
        state_both = _out(model, x)["hook_states"]["h"]
        model.remove_hook("h")
        model.register_hook(last_only)
        state_last = _out(model, x)["hook_states"]["h"]
    assert not torch.allclose(state_both, state_last)  # layer 0's update was carried to layer 1
    plain = LatentNeuralHook("p", 2, dim, [0, 1], use_transform=False)
    s = torch.randn(1, 2, dim)
    assert plain.transform is None and torch.equal(plain.carry(s), s)
    s4 = torch.randn(1, 4, dim)
    assert not torch.equal(both.carry(s4), s4)


def test_hooks_compose_and_see_each_other(tiny_model, tiny_config) -> None:
    tiny_model.eval()
    x = make_inputs(tiny_config)
    dim = tiny_config.hidden_dim
    tiny_model.register_hook(LatentNeuralHook("a", 3, dim, [0, 1]))
    b = tiny_model.register_hook(LatentNeuralHook("b", 2, dim, [1]))
    with torch.no_grad():
        states = _out(tiny_model, x)["hook_states"]
        assert set(states) == {"a", "b"}
        b.tokens.add_(1.0)
        states2 = _out(tiny_model, x)["hook_states"]
    assert not torch.allclose(states["a"], states2["a"])  # a attends to b's tokens


def test_save_and_load_without_base_weights(tmp_path, tiny_config) -> None:
    torch.manual_seed(0)
    model = OmniLatentModel(tiny_config).eval()
    x = make_inputs(tiny_config)
    hook = LatentNeuralHook("style", 5, tiny_config.hidden_dim, [1], gate_bias_init=-2.0,
                            use_transform=False)
    with torch.no_grad():
        hook.tokens.normal_()
    model.register_hook(hook)
    with torch.no_grad():
        expected = _out(model, x)["output"]
    hook.save(tmp_path / "style")
    assert sorted(p.name for p in (tmp_path / "style").iterdir()) == ["hook.json",
                                                                      "hook.safetensors"]
    assert (tmp_path / "style" / "hook.safetensors").stat().st_size < 10_000  # no base weights
    loaded = LatentNeuralHook.load(tmp_path / "style")
    assert loaded.settings() == hook.settings()
    # the same base weights plus the loaded hook reproduce the outputs
    model.remove_hook("style")
    model.register_hook(loaded)
    with torch.no_grad():
        torch.testing.assert_close(_out(model, x)["output"], expected, rtol=0, atol=0)
    # and a fresh model of the same width accepts it
    fresh = OmniLatentModel(tiny_config)
    fresh.register_hook(LatentNeuralHook.load(tmp_path / "style"))
    assert "style" in fresh.hooks


def test_load_rejects_non_hook_directory(tmp_path) -> None:
    with pytest.raises(HookError, match="not a saved hook"):
        LatentNeuralHook.load(tmp_path)


@pytest.mark.parametrize(
    ("hook_args", "message"),
    [
        (dict(name="h", num_tokens=2, dim=16, target_layers=[0]), "dim 16"),
        (dict(name="h", num_tokens=2, dim=32, target_layers=[2]), "layer"),
    ],
)
def test_register_mismatched_hook_is_a_clear_error(tiny_model, hook_args, message) -> None:
    with pytest.raises(HookError, match=message):
        tiny_model.register_hook(LatentNeuralHook(**hook_args))
    assert len(tiny_model.hooks) == 0


def test_hook_argument_and_lifecycle_errors(tiny_model, tiny_config) -> None:
    dim = tiny_config.hidden_dim
    with pytest.raises(HookError, match="target_layers"):
        LatentNeuralHook("h", 2, dim, [])
    with pytest.raises(HookError, match="each from 0 to"):
        LatentNeuralHook("h", 2, dim, [-1])
    with pytest.raises(HookError, match="num_tokens"):
        LatentNeuralHook("h", 0, dim, [0])
    with pytest.raises(HookError, match="name"):
        LatentNeuralHook("a.b", 1, dim, [0])
    tiny_model.register_hook(LatentNeuralHook("h", 2, dim, [0]))
    with pytest.raises(HookError, match="already registered"):
        tiny_model.register_hook(LatentNeuralHook("h", 2, dim, [1]))
    with pytest.raises(HookError, match="no hook named 'zz'"):
        tiny_model.remove_hook("zz")


def test_gradient_checkpointing_with_hooks_matches(tiny_config) -> None:
    import dataclasses

    x = make_inputs(tiny_config)
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = OmniLatentModel(dataclasses.replace(tiny_config, gradient_checkpointing=ckpt))
        torch.manual_seed(1)
        hook = model.register_hook(LatentNeuralHook("h", 3, tiny_config.hidden_dim, [0, 1]))
        model("audio", x["audio"], "image", target=x["image"])["loss"].backward()
        grads.append((hook.tokens.grad.clone(), hook.gate.grad.clone()))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-6, atol=1e-8)


def test_hooks_are_not_shared_between_models(tiny_config) -> None:
    """A hook registered on one model acts on that model only: another model built from the
    same config keeps its outputs bit for bit, its parameters and its (empty) hook list."""
    models = [OmniLatentModel(tiny_config).eval() for _ in range(2)]
    x = make_inputs(tiny_config)
    params_before = [id(p) for p in models[1].parameters()]
    with torch.no_grad():
        before = [_out(model, x)["output"] for model in models]
        hook = models[0].register_hook(LatentNeuralHook("h", 4, tiny_config.hidden_dim, [0, 1],
                                                        gate_bias_init=4.0))  # wide open
        assert not torch.equal(_out(models[0], x)["output"], before[0])  # it acts where it is
        assert torch.equal(_out(models[1], x)["output"], before[1])
    assert [id(p) for p in models[1].parameters()] == params_before
    assert not {id(p) for p in hook.parameters()} & set(params_before)
    with pytest.raises(HookError, match="no hook named 'h'"):
        models[1].remove_hook("h")


def test_a_hook_takes_the_models_dtype_when_registered(tiny_model, tiny_config) -> None:
    tiny_model.to(torch.bfloat16).eval()
    hook = tiny_model.register_hook(LatentNeuralHook("h", 4, tiny_config.hidden_dim, [0]))
    assert {p.dtype for p in hook.parameters()} == {torch.bfloat16}
    x = {name: value.to(torch.bfloat16) if value.is_floating_point() else value
         for name, value in make_inputs(tiny_config).items()}
    with torch.no_grad():
        out = _out(tiny_model, x)["output"]
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_all_hooks_of_a_layer_share_one_qkv_and_one_mlp_call(tiny_model, tiny_config) -> None:
    """Issue 10: per layer, content and hooks take one qkv projection each, and one MLP call
    covers every hook's tokens, however many hooks are registered."""
    tiny_model.register_hook(LatentNeuralHook("a", 3, tiny_config.hidden_dim, [0]))
    tiny_model.register_hook(LatentNeuralHook("b", 2, tiny_config.hidden_dim, [0]))
    calls = {"qkv": 0, "mlp": 0}
    block = tiny_model.blocks[0]
    block.attn.qkv.register_forward_hook(lambda *_: calls.__setitem__("qkv", calls["qkv"] + 1))
    block.mlp.register_forward_hook(lambda *_: calls.__setitem__("mlp", calls["mlp"] + 1))
    x = make_inputs(tiny_config)
    with torch.no_grad():
        _out(tiny_model, x)
    assert calls == {"qkv": 2, "mlp": 2}  # content + all hooks, for each
