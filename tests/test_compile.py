"""`torch.compile` with Latent Neural Hooks (omnilatent/training/compile.py).

CPU inductor takes tens of seconds per graph, so one test compiles with it (forward and
backward of one block graph, two hooks) and the rest use backend="aot_eager" (dynamo and
AOTAutograd, no code generation) or "eager" (dynamo alone, for counting graphs: the guards
and recompiles are dynamo's whatever the backend). Eager references come from the same model
under ``torch.compiler.set_stance("force_eager")``.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from omnilatent import LatentNeuralHook, OmniLatentModel
from omnilatent.config import MODALITIES
from omnilatent.tasks import PairSampler, Task
from omnilatent.training import TrainConfig, Trainer
from omnilatent.training import compile as compile_policy
from omnilatent.training.compile import compile_blocks
from tests.conftest import make_inputs

ATOL = 1e-5


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _hook(cfg, name: str, layers: list[int], tokens: int = 4) -> LatentNeuralHook:
    hook = LatentNeuralHook(name, tokens, cfg.hidden_dim, layers)
    with torch.no_grad():
        hook.gate.fill_(1.0)  # open, so that a hook a graph ignored would show in the output
    return hook


def _run(model: OmniLatentModel, x: dict, source: str, target: str
         ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """(loss, output, gradients) of one training step's forward and backward."""
    model.zero_grad(set_to_none=True)
    out = model(source, x[source], target, target=x[target])
    out["loss"].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out["loss"].detach(), out["output"].detach(), grads


def _run_eager(model, x, source, target):
    with torch.compiler.set_stance("force_eager"):
        return _run(model, x, source, target)


def _assert_close(got, want) -> None:
    loss, output, grads = got
    ref_loss, ref_output, ref_grads = want
    torch.testing.assert_close(loss, ref_loss, atol=ATOL, rtol=0)
    torch.testing.assert_close(output, ref_output, atol=ATOL, rtol=0)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=ATOL, rtol=0, msg=name)


def _no_eager_fallback() -> None:
    assert counters["frames"]["total"] == counters["frames"]["ok"] > 0
    assert not any("recompile" in reason for reason in counters["unimplemented"])
    assert not counters["graph_break"]


def test_inductor_blocks_match_eager_with_two_hooks(tiny_model, tiny_config) -> None:
    model = tiny_model.train()
    for hook in (_hook(tiny_config, "a", [0, 1]), _hook(tiny_config, "b", [0, 1], tokens=3)):
        model.register_hook(hook)
    compile_blocks(model, backend="inductor")
    x = make_inputs(tiny_config)
    compiled = _run(model, x, "image", "image")
    _assert_close(compiled, _run_eager(model, x, "image", "image"))
    assert any(n.startswith("hooks.b.") for n in compiled[2])  # the hooks got gradients
    assert counters["stats"]["unique_graphs"] == 1  # both blocks ran one shared graph
    _no_eager_fallback()


def test_all_sixteen_tasks_share_the_block_graphs(tiny_model, tiny_config) -> None:
    """Every pair, two text lengths (with padding), two hooks active at different layers:
    a handful of block graphs and no fallback to eager. A whole-model compile needs one
    graph per task here and runs 8 of the 16 tasks eagerly after recompile_limit (8)."""
    model = tiny_model.train()
    model.register_hook(_hook(tiny_config, "a", [0, 1]))
    model.register_hook(_hook(tiny_config, "b", [1], tokens=3))
    compile_blocks(model, backend="eager")
    for text_len in (7, 11):
        x = make_inputs(tiny_config, text_len=text_len, seed=text_len)
        for target in MODALITIES:
            for source in MODALITIES:
                _run(model, x, source, target)
    # {1, 2} active hooks x {no mask, text padding mask}; the sequence length is dynamic.
    assert counters["stats"]["unique_graphs"] <= 4
    assert counters["stats"]["unique_graphs"] < torch._dynamo.config.recompile_limit
    _no_eager_fallback()


def test_hooks_registered_or_removed_after_compiling_take_effect(tiny_model,
                                                                   tiny_config) -> None:
    model = tiny_model.train()
    compile_blocks(model, backend="aot_eager")
    x = make_inputs(tiny_config)
    bare = _run(model, x, "audio", "text")
    model.register_hook(_hook(tiny_config, "a", [0, 1]))
    hooked = _run(model, x, "audio", "text")
    assert not torch.allclose(hooked[1], bare[1], atol=1e-3)  # not a stale hook-free graph
    _assert_close(hooked, _run_eager(model, x, "audio", "text"))
    model.remove_hook("a")
    removed = _run(model, x, "audio", "text")
    _assert_close(removed, bare)
    _no_eager_fallback()


def test_evaluation_runs_eagerly_and_checkpointing_composes(tiny_model, tiny_config) -> None:
    model = tiny_model.train()
    model.gradient_checkpointing = True
    model.register_hook(_hook(tiny_config, "a", [1]))
    compile_blocks(model, backend="aot_eager")
    x = make_inputs(tiny_config)
    _assert_close(_run(model, x, "video", "audio"), _run_eager(model, x, "video", "audio"))
    graphs = counters["stats"]["unique_graphs"]
    model.eval()
    with torch.no_grad():
        model("video", x["video"], "audio")
    assert counters["stats"]["unique_graphs"] == graphs


class _OneTask(PairSampler):
    def select(self, step: int, present: set[str], notify) -> Task:
        return Task("image", "text")


def _losses(compiled: bool, tiny_config, loader) -> list[float]:
    torch.manual_seed(0)
    model = OmniLatentModel(tiny_config)
    model.register_hook(_hook(tiny_config, "a", [0, 1]))
    config = TrainConfig(steps=3, lr=1e-2, device="cpu", compile=compiled, log_interval=1)
    result = Trainer(model, config, loader, sampler=_OneTask(0)).train()
    return [entry["loss"] for entry in result.history]


def test_trainer_compile_with_a_hook_gives_the_eager_losses(tiny_config, monkeypatch) -> None:
    monkeypatch.setattr(compile_policy, "BACKEND", "aot_eager")
    batches = [make_inputs(tiny_config, seed=i) for i in range(3)]
    eager = _losses(False, tiny_config, batches)
    compiled = _losses(True, tiny_config, batches)
    assert counters["stats"]["unique_graphs"] >= 1  # the compiled path did run
    assert len(compiled) == 3 and eager[0] != eager[-1]
    assert compiled == pytest.approx(eager, abs=ATOL)
    _no_eager_fallback()
