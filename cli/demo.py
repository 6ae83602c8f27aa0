"""`omni demo`: the seed's ``demo.py`` on the tiny model, printed part by part.

The work and its checks live in `omnilatent.demo`; this module only renders the report."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cli.console import console
from cli.errors import run_command
from cli.options import Seed, Threads

if TYPE_CHECKING:
    from omnilatent.demo import DemoReport

EXAMPLES = """
[bold]Examples[/]

  Self-reconstruction, translation, a hook, a multimodal pass and a gradient check:
    [cyan]omni demo[/]
"""


def _verdict(ok: bool, good: str = "ok", bad: str = "FAILED") -> str:
    return f"[green]{good}[/]" if ok else f"[bold red]{bad}[/]"


def _render(report: DemoReport) -> None:
    console.print(f"tiny model: {report.parameters:,} parameters, random weights and inputs\n")
    console.print("[bold]Self-reconstruction[/]")
    for r in report.reconstructions:
        console.print(f"  {r.modality:>5}: {r.input_shape} -> {r.output_shape}, "
                      f"loss {r.loss:.3f}")
    console.print("[bold]Cross-modal translation[/]")
    for t in report.translations:
        ids = f", greedy ids {list(t.token_ids)}" if t.token_ids else ""
        console.print(f"  {t.source} -> {t.target}: {t.output_shape}{ids} "
                      f"{_verdict(t.finite, 'finite', 'NOT FINITE')}", soft_wrap=True)
    h = report.hook
    console.print("[bold]Latent Neural Hook[/]")
    console.print(f"  registered {h.name!r}: {h.num_tokens} tokens at layers "
                  f"{list(h.target_layers)}, {h.parameters:,} parameters, gate {h.gate:.4f}",
                  soft_wrap=True)
    console.print(f"  image -> audio changed by up to {h.change:.2e} "
                  f"{_verdict(h.change > 0, 'ok', 'UNCHANGED')}")
    console.print(f"  removed: outputs bit-identical to before "
                  f"{_verdict(h.restored)}; hooks left: {list(h.hooks_after) or 'none'}")
    m = report.multimodal
    console.print("[bold]Multimodal forward[/]")
    console.print(f"  inputs {' + '.join(m.inputs)}:")
    for modality, shape in m.output_shapes.items():
        console.print(f"  {modality:>5}: {shape}, loss {m.losses[modality]:.3f}")
    g = report.gradients
    console.print("[bold]Gradient flow[/]")
    console.print(f"  loss {g.loss:.3f}; {g.used} of {g.total} parameter tensors used")
    for part, ok in g.components.items():
        console.print(f"  {part:>15}: gradient {_verdict(ok, 'ok', 'MISSING')}")
    if g.without_gradient:
        console.print(f"  no gradient: {', '.join(g.without_gradient)}")


def demo_command(seed: Seed = 0, threads: Threads = None) -> None:
    """Show the model at work in seconds on a CPU: self-reconstruction of every modality,
    cross-modal translation, a Latent Neural Hook registered and removed, a multimodal
    forward pass and a gradient-flow check (what the original OmniLatent's demo.py did)."""

    def body() -> None:
        from omnilatent.demo import run_demo
        from omnilatent.threads import configure_threads

        configure_threads(threads)
        with console.status("running the demo on the tiny model"):
            report = run_demo(seed=seed)
        _render(report)

    run_command(body)
