"""What the seed's ``demo.py`` showed, as results a test can check and `omni demo` prints.

Five parts on random inputs, each returning what it found rather than printing it:
self-reconstruction of every modality, cross-modal translation, a Latent Neural Hook's
lifecycle (it changes outputs; removing it restores them bit for bit), a multimodal forward
pass, and a gradient-flow check (every parameter the forward uses gets a finite, non-zero
gradient: no dead branch). At the tiny size (``TINY_DEMO``) the whole run takes seconds on a
CPU."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from omnilatent.config import MODALITIES, OmniLatentConfig
from omnilatent.model import OmniLatentModel
from omnilatent.model.hooks import LatentNeuralHook

TINY_DEMO = OmniLatentConfig(hidden_dim=128, num_layers=4, num_heads=4)  # the debug size
TRANSLATIONS = (("image", "text"), ("text", "image"), ("audio", "video"))  # the seed's three
TEXT_TOKENS = 16  # greedy tokens a translation to text decodes (one decoder step each)
# Every modality once in and once out, each from another one: together these tasks use every
# encoder, the target decoder and every output head, at a quarter of the tokens of one pass
# with all four modalities in at once.
GRADIENT_TASKS = (("text", "image"), ("image", "audio"), ("audio", "video"), ("video", "text"))
HOOK_NAME = "style_control"


@dataclass(frozen=True)
class Reconstruction:
    modality: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    loss: float


@dataclass(frozen=True)
class Translation:
    source: str
    target: str
    output_shape: tuple[int, ...]
    finite: bool  # every output value is finite
    token_ids: tuple[int, ...] = ()  # text targets: sample 0's first greedy ids


@dataclass(frozen=True)
class HookCheck:
    name: str
    num_tokens: int
    target_layers: tuple[int, ...]
    parameters: int
    gate: float  # sigmoid of the gate at initialisation: how much content reads the hook
    change: float  # max |output with the hook - output without|, > 0
    restored: bool  # outputs after remove_hook are bit-identical to before register_hook
    hooks_after: tuple[str, ...]  # registered hooks once it is removed (none)


@dataclass(frozen=True)
class MultimodalForward:
    inputs: tuple[str, ...]
    output_shapes: dict[str, tuple[int, ...]]
    losses: dict[str, float]


@dataclass(frozen=True)
class GradientFlow:
    loss: float
    total: int  # parameters of the model
    used: int  # parameters the forward pass reached
    without_gradient: tuple[str, ...]  # used ones whose gradient is missing, zero or not finite
    components: dict[str, bool]  # top-level module -> every used parameter got a gradient


@dataclass(frozen=True)
class DemoReport:
    parameters: int
    reconstructions: tuple[Reconstruction, ...]
    translations: tuple[Translation, ...]
    hook: HookCheck
    multimodal: MultimodalForward
    gradients: GradientFlow


def demo_inputs(config: OmniLatentConfig, batch: int = 2, text_len: int = 32,
                seed: int = 0) -> dict[str, Tensor]:
    """Random inputs of every modality at the config's sizes, as the seed's demo made them."""
    g = torch.Generator().manual_seed(seed)
    return {
        "text": torch.randint(1, config.vocab_size, (batch, text_len), generator=g),  # (B, L)
        "audio": torch.randn(batch, config.n_mels, config.audio_frames, generator=g),
        "image": torch.randn(batch, 3, config.image_size, config.image_size, generator=g),
        "video": torch.randn(batch, 3, config.video_frames, config.video_size,
                             config.video_size, generator=g),  # (B, 3, T, H, W)
    }


@torch.no_grad()
def reconstructions(model: OmniLatentModel, data: dict[str, Tensor]) -> list[Reconstruction]:
    model.eval()
    results = []
    for modality in MODALITIES:
        out = model.reconstruct(modality, data[modality])
        results.append(Reconstruction(modality, tuple(data[modality].shape),
                                      tuple(out["output"].shape), float(out["loss"])))
    return results


@torch.no_grad()
def translations(model: OmniLatentModel, data: dict[str, Tensor]) -> list[Translation]:
    model.eval()
    results = []
    for source, target in TRANSLATIONS:
        length = TEXT_TOKENS if target == "text" else None
        output = model(source, data[source], target, target_length=length)["output"]
        ids = tuple(output[0, :6].argmax(dim=-1).tolist()) if target == "text" else ()
        results.append(Translation(source, target, tuple(output.shape),
                                   bool(torch.isfinite(output).all()), ids))
    return results


@torch.no_grad()
def hook_check(model: OmniLatentModel, data: dict[str, Tensor]) -> HookCheck:
    """Register a hook on the first (up to) four layers, compare image->audio outputs with
    and without it, and remove it. A continuous target, so the change is measured directly
    (greedy text would hide it behind an argmax)."""
    model.eval()

    def forward() -> Tensor:
        return model("image", data["image"], "audio")["output"]  # (B, M, T)

    before = forward()
    hook = LatentNeuralHook(HOOK_NAME, num_tokens=8, dim=model.config.hidden_dim,
                            target_layers=list(range(min(4, model.config.num_layers))),
                            gate_bias_init=-4.0, use_transform=True)
    model.register_hook(hook)
    with_hook = forward()
    model.remove_hook(HOOK_NAME)
    after = forward()
    return HookCheck(hook.name, hook.num_tokens, hook.target_layers,
                     sum(p.numel() for p in hook.parameters()), float(hook.gate_value()),
                     float((with_hook - before).abs().max()), torch.equal(before, after),
                     tuple(model.hooks))


@torch.no_grad()
def multimodal_forward(model: OmniLatentModel, data: dict[str, Tensor]) -> MultimodalForward:
    """Text and image in at once, each of them out, with losses against the inputs."""
    model.eval()
    inputs = {"text": data["text"], "image": data["image"]}
    out = model.forward_multimodal(inputs, ["text", "image"], targets=inputs)
    return MultimodalForward(tuple(inputs),
                             {m: tuple(t.shape) for m, t in out["outputs"].items()},
                             {m: float(loss) for m, loss in out["losses"].items()})


def _graph_parameters(loss: Tensor) -> set[int]:
    """ids of the tensors whose gradients the backward of ``loss`` accumulates: the
    parameters the forward pass used."""
    found: set[int] = set()
    seen: set[object] = set()
    stack = [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)  # an AccumulateGrad node's leaf
        if variable is not None:
            found.add(id(variable))
        stack.extend(next_node for next_node, _ in node.next_functions)
    return found


def gradient_flow(model: OmniLatentModel, data: dict[str, Tensor]) -> GradientFlow:
    """One training step's forward over `GRADIENT_TASKS` (every encoder, decoder and head takes
    part), then backward: which used parameters got no usable gradient."""
    model.train()
    model.zero_grad(set_to_none=True)
    loss = torch.stack([model(source, data[source], target, target=data[target])["loss"]
                        for source, target in GRADIENT_TASKS]).sum()
    used = _graph_parameters(loss)
    loss.backward()
    named = [(name, p) for name, p in model.named_parameters() if id(p) in used]
    missing = tuple(name for name, p in named if not _has_gradient(p))
    components: dict[str, bool] = {}
    for name, _ in named:
        part = _component(name)
        components[part] = components.get(part, True) and name not in missing
    model.zero_grad(set_to_none=True)
    return GradientFlow(float(loss.detach()), sum(1 for _ in model.parameters()), len(named),
                        missing, components)


def _has_gradient(p: nn.Parameter) -> bool:
    return p.grad is not None and bool(torch.isfinite(p.grad).all()) and bool(p.grad.abs().sum())


def _component(name: str) -> str:
    """``encoders.audio.proj.weight`` -> ``encoders.audio``; ``blocks.3.attn...`` ->
    ``blocks``; ``text_embed.weight`` -> ``text_embed``."""
    parts = name.split(".")
    if parts[0] in ("encoders", "decoders") and len(parts) > 2:
        return ".".join(parts[:2])
    return parts[0]


def run_demo(config: OmniLatentConfig = TINY_DEMO, batch: int = 2, seed: int = 0) -> DemoReport:
    """All five parts on one freshly initialised model (weights seeded with ``seed``)."""
    torch.manual_seed(seed)
    model = OmniLatentModel(config)
    data = demo_inputs(config, batch, seed=seed)
    return DemoReport(model.num_parameters(), tuple(reconstructions(model, data)),
                      tuple(translations(model, data)), hook_check(model, data),
                      multimodal_forward(model, data), gradient_flow(model, data))
