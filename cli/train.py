"""`omni train`: parse the options, build the run with `omnilatent.training.run` (data, model,
trainer, evaluator, resume) and show it: live progress, then a summary.

The options live here; torch-backed modules are imported when the command runs (see
`cli/train_display.py`), so `omni --help` lists every command without loading torch."""

from __future__ import annotations

import copy
import re
import signal
from contextlib import contextmanager, nullcontext
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, get_args

import typer

from cli.console import console, plain
from cli.errors import EXIT_USAGE, CLIError, run_command
from cli.options import Device, SaveDir, Seed, Threads, Workers
from omnilatent.config import OmniLatentConfig
from omnilatent.errors import ConfigError, UsageError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from omnilatent.threads import ThreadChoice
    from omnilatent.training.curriculum import Schedule
    from omnilatent.training.run import ResumePlan, TrainRun, TrainRunOptions

EXAMPLES = """
[bold]Examples[/]

  Curriculum (5 phases) over shards written by `omni prepare`, tiny model on CPU:
    [cyan]omni train --shards data/prepared --phase-schedule default --steps 40 \\
      --batch-size 4 --dim 64 --layers 2 --heads 4 --save-dir runs/tiny[/]

  Killed or stopped? Continue exactly where it stopped:
    [cyan]omni train --shards data/prepared --steps 40 --batch-size 4 --dim 64 \\
      --layers 2 --heads 4 --save-dir runs/tiny --resume auto[/]

  Custom phase shares, or a TOML/JSON schedule file:
    [cyan]omni train --shards data/prepared \\
      --phase-schedule warmup=0.05,crossmodal=0.3,temporal=0.3,grounding=0.1,joint=0.25[/]
    [cyan]omni train --shards data/prepared --phase-schedule schedule.toml[/]

  Learn straight from a folder of videos (decoded on the fly, no shards):
    [cyan]omni train --video-dir ~/videos --steps 200 --dim 128 --layers 4 --heads 4[/]

  Check the training loop and memory on synthetic data (all 16 modality pairs in turn):
    [cyan]omni train --synthetic --steps 30 --dim 64 --layers 2 --heads 4 --save-dir runs/syn[/]

  Train a new hook on a trained model, the model itself frozen (hook alone in
  runs/hook/hooks/style; use it with `omni eval/generate CHECKPOINT --hook runs/hook/hooks/style`):
    [cyan]omni train --shards data/prepared --from runs/tiny --hook style:tokens=8,layers=0-1 \\
      --freeze-base --lr 3e-2 --steps 200 --save-dir runs/hook[/]

  Default model (768 wide, 12 layers: 132.71M parameters with byte-level text, 157.09M
  with a 32000-piece SentencePiece vocabulary) on a GPU with AMP and gradient checkpointing:
    [cyan]omni train --shards data/prepared --steps 5000 --batch-size 4 --device cuda \\
      --grad-checkpointing --save-dir runs/base --save-every 500[/]
"""

# `omni train --help` groups its options under these headings; `Data(...)` is a typer.Option
# listed under "Data", and so on
DATA, MODEL, START, CURRICULUM = "Data", "Model", "Start from a checkpoint, hooks", "Curriculum"
OPTIMISATION, CHECKPOINTS, RUNTIME = "Optimisation", "Checkpoints and evaluation", "Runtime"
Data, Model, Start, Curriculum, Optimisation, Checkpoints, Runtime = (
    partial(typer.Option, rich_help_panel=panel)
    for panel in (DATA, MODEL, START, CURRICULUM, OPTIMISATION, CHECKPOINTS, RUNTIME))


def _in_panel(alias: Any, panel: str) -> Any:
    """A shared option alias of `cli.options` (``Annotated[type, OptionInfo]``), shown under
    ``panel`` here: typer takes one OptionInfo per parameter, so a copy carries the panel."""
    base, info = get_args(alias)
    info = copy.copy(info)
    info.rich_help_panel = panel
    return Annotated[base, info]


def _show_run(run: TrainRun, threads: ThreadChoice) -> None:
    """What the run reads and where it evaluates and logs, before it starts."""
    console.print(f"data: {plain(run.source.description)}", soft_wrap=True)
    held = run.held_out
    if held.missing is not None:
        console.print(f"[yellow]{plain(held.missing)}[/]", soft_wrap=True)
    elif held.shards is not None:
        console.print(f"eval: up to {run.options.evaluation.samples} windows of "
                      f"{plain(held.shards)}"
                      + ("" if held.split is None else f" ({plain(held.split)} split)"),
                      soft_wrap=True)
    console.print(f"tensorboard: tensorboard --logdir {plain(run.options.save_dir)}",
                  soft_wrap=True)
    console.print(f"cpu threads: {threads.threads} ({threads.reason})")


def _show_resume(plan: ResumePlan, options: TrainRunOptions) -> None:
    """The checkpoints `--resume auto` passed over, and a fresh start when it found none."""
    for path, reason in plan.skipped:
        console.print(f"[yellow]skipping unusable checkpoint[/] {plain(path.name)}: "
                      f"{plain(reason)}", soft_wrap=True)
    if options.resume == "auto" and plan.checkpoint is None:
        console.print(f"no complete checkpoint in {plain(options.save_dir)}: starting from "
                      f"step 0", soft_wrap=True)


@contextmanager
def _stop_handler() -> Iterator[list[bool]]:
    """First Ctrl-C / SIGTERM: finish the step, checkpoint, exit. Second Ctrl-C: abort. The
    handlers before it are back when the block ends (an in-process caller, e.g. a test run,
    keeps its own)."""
    flag = [False]

    def handler(signum: int, _frame: object) -> None:
        if flag[0] and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag[0] = True
        console.print("[yellow]stop requested: saving a checkpoint after this step…[/]")

    before = {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for signum, previous in before.items():
            signal.signal(signum, previous)


def _schedule(phase_schedule: str | None, fracs: dict[str, float | None]) -> Schedule | None:
    """The curriculum the options ask for; a schedule they cannot make is a usage error that
    names the option (`--phase-schedule` or the `--*-frac` given)."""
    from omnilatent.training.curriculum import default_schedule, parse_schedule

    given = {name: value for name, value in fracs.items() if value is not None}
    if given and phase_schedule not in (None, "default"):
        raise CLIError("use either --phase-schedule or the --*-frac shortcuts, not both",
                       exit_code=EXIT_USAGE)
    try:
        if given:
            return default_schedule(given)
        return None if phase_schedule is None else parse_schedule(phase_schedule)
    except ConfigError as exc:
        option = (" ".join(f"--{name}-frac {value:g}" for name, value in given.items())
                  if given else f"--phase-schedule {phase_schedule}")
        raise CLIError(f"{option}: {exc}", exit_code=EXIT_USAGE, hint="shares are of --steps; "
                       "phases not named get 0 (the --*-frac shortcuts keep the others' "
                       "default shares): see `omni train --help`") from None


# OmniLatentConfig's fields that `omni train` sets, by the option that sets them
MODEL_OPTIONS = {"hidden_dim": "--dim", "num_layers": "--layers", "num_heads": "--heads",
                 "text_decoding": "--text-decoding"}


def _check_model_shape(dim: int, layers: int, heads: int, text_decoding: str) -> None:
    """The model's own validation, before torch is imported, with the options' names in its
    message ('--dim (30) must be divisible by --heads (4)'), as a usage error."""
    try:
        OmniLatentConfig(hidden_dim=dim, num_layers=layers, num_heads=heads,
                         text_decoding=text_decoding)
    except ConfigError as exc:
        message = re.sub(r"\b(" + "|".join(MODEL_OPTIONS) + r")\b",
                         lambda match: MODEL_OPTIONS[match.group(1)], str(exc))
        raise CLIError(message, exit_code=EXIT_USAGE) from None


def _frac(name: str) -> Any:
    return Curriculum(f"--{name}-frac", min=0.0, max=1.0,
                      help=f"Share of steps for the {name} phase (shortcut; "
                      + ("takes what the others leave when omitted)." if name == "joint"
                         else "others keep their default share)."))


def train(
    synthetic: Annotated[bool, Data("--synthetic", help="Train on seeded synthetic multimodal "
                                    "data (checks pipeline and memory).")] = False,
    shards: Annotated[str | None, Data("--shards", help="A folder written by `omni prepare` (or "
                                       "its shards as a brace pattern): stream its samples.")]
    = None,
    video_dir: Annotated[Path | None, Data(
        "--video-dir", help="Decode the videos of this folder on the fly (no shards).")] = None,
    tokenizer_path: Annotated[Path | None, Data(
        "--tokenizer", help="A SentencePiece .model file (default: byte-level tokens).")] = None,
    max_text_len: Annotated[int, Data("--max-text-len", min=1,
                                      help="Tokens kept per transcript.")] = 128,
    clip_duration: Annotated[float, Data("--clip-duration",
                                         help="--video-dir: seconds per clip.")] = 2.0,
    clip_stride: Annotated[float, Data("--clip-stride",
                                       help="--video-dir: seconds between clip starts.")] = 1.0,
    workers: _in_panel(Workers, DATA) = 0,
    dim: Annotated[int, Model("--dim", min=8, help="Model width.")] = OmniLatentConfig.hidden_dim,
    layers: Annotated[int, Model("--layers", min=1, help="Transformer blocks.")]
    = OmniLatentConfig.num_layers,
    heads: Annotated[int, Model("--heads", min=1, help="Attention heads; --dim must be a "
                                "multiple of 2 x --heads.")] = OmniLatentConfig.num_heads,
    text_decoding: Annotated[str, Model("--text-decoding", help="autoregressive (default) or "
                                        "parallel text output (see the README's measurement).")]
    = OmniLatentConfig.text_decoding,
    from_checkpoint: Annotated[Path | None, Start(
        "--from", help="Start from a trained checkpoint (its folder, or a save dir: the "
        "newest), with its model shape and tokenizer, a fresh optimizer and step 0 (--resume "
        "continues a run instead).")] = None,
    hook_specs: Annotated[list[str] | None, Start(
        "--hook", help="Add a new Latent Neural Hook NAME[:tokens=8,layers=0-5] (default: 8 "
        "tokens, every layer; layers=0,2,4 also works); repeat for several. Saved alone in "
        "SAVE_DIR/hooks/NAME at each checkpoint.")] = None,
    freeze_base: Annotated[bool, Start(
        "--freeze-base", help="Train only the new hooks: the checkpoint's weights stay "
        "bit-identical (needs --from and --hook).")] = False,
    phase_schedule: Annotated[str | None, Curriculum(
        "--phase-schedule", help="Curriculum: 'default'; shares of the phases warmup, "
        "crossmodal, temporal, grounding and joint that sum to 1 (those not named get 0), e.g. "
        "warmup=0.2,joint=0.8; or a .toml/.json file. Default for --shards/--video-dir; "
        "without it --synthetic trains all 16 modality pairs in turn.")] = None,
    warmup_frac: Annotated[float | None, _frac("warmup")] = None,
    crossmodal_frac: Annotated[float | None, _frac("crossmodal")] = None,
    temporal_frac: Annotated[float | None, _frac("temporal")] = None,
    grounding_frac: Annotated[float | None, _frac("grounding")] = None,
    joint_frac: Annotated[float | None, _frac("joint")] = None,
    steps: Annotated[int, Optimisation("--steps", "--total-steps", min=1,
                                       help="Optimizer steps to train for.")] = 1000,
    batch_size: Annotated[int, Optimisation(
        "--batch-size", min=1, help="Samples per batch (per process under torchrun).")] = 4,
    grad_accum: Annotated[int, Optimisation("--grad-accum", min=1,
                                            help="Batches accumulated per step.")] = 1,
    lr: Annotated[float, Optimisation("--lr", min=0.0, help="Peak learning rate.")] = 6e-4,
    save_dir: _in_panel(SaveDir, CHECKPOINTS) = Path("runs/omni"),
    save_every: Annotated[int, Checkpoints(
        "--save-every", min=0, help="Checkpoint every N steps (0 = only at the end).")] = 0,
    keep_last: Annotated[int, Checkpoints("--keep-last", min=0,
                                          help="Checkpoints kept (0 = all).")] = 3,
    resume: Annotated[str, Checkpoints("--resume", help="'auto' (newest complete checkpoint in "
                                       "--save-dir), 'none', or a checkpoint path.")] = "none",
    eval_every: Annotated[int | None, Checkpoints(
        "--eval-every", min=0, help="Evaluate on held-out data every N steps (default: at each "
        "checkpoint; 0: never). Records go to metrics.jsonl.")] = None,
    eval_shards: Annotated[str | None, Checkpoints("--eval-shards", help="Held-out data to "
                                                   "evaluate on (default: the eval split of "
                                                   "--shards, when it has one).")] = None,
    eval_samples: Annotated[int, Checkpoints("--eval-samples", min=1, help="Windows per "
                                             "evaluation (the first ones, always the same).")]
    = 256,
    label_pattern: Annotated[str | None, Checkpoints(
        "--label-pattern", help="Regex on each held-out window's source path; its first group "
        "is a class label, and retrieval is also counted by class (as `omni eval "
        "--label-pattern`).")] = None,
    device: _in_panel(Device, RUNTIME) = "auto",
    no_amp: Annotated[bool, Runtime(
        "--no-amp", help="Disable mixed precision on GPU (it is always off on CPU).")] = False,
    grad_checkpointing: Annotated[bool, Runtime(
        "--grad-checkpointing/--no-grad-checkpointing",
        help="Recompute activations in backward to save memory.")] = False,
    compile_model: Annotated[bool, Runtime("--compile", help="torch.compile each transformer "
                                           "block (all tasks share its graphs; hooks work).")]
    = False,
    fsdp: Annotated[bool, Runtime(
        "--fsdp", help="Under torchrun: shard the model over the processes (FSDP2) instead of "
        "replicating it (DDP), for models too big for one GPU.")] = False,
    log_interval: Annotated[int, Runtime("--log-interval", min=1, help="Steps per metrics line "
                                         "(16 = one cycle of all modality pairs).")] = 16,
    threads: _in_panel(Threads, RUNTIME) = None,
    seed: _in_panel(Seed, RUNTIME) = 0) -> None:
    """Train OmniLatent on prepared shards, raw videos or synthetic data. Stop with Ctrl-C or
    SIGTERM: the current step finishes and a checkpoint is written, so `--resume auto`
    continues exactly where it stopped."""

    def body() -> None:
        # checked before torch is imported (seconds): a usage error needs no model
        sources = {"synthetic": synthetic, "shards": shards, "video-dir": video_dir}
        chosen = [name for name, value in sources.items() if value]
        if len(chosen) != 1:
            raise CLIError("choose exactly one data source" + (
                f" (got {', '.join('--' + name for name in chosen)})" if chosen else ""),
                hint="pass --synthetic, --shards OUT_DIR or --video-dir VIDEOS",
                exit_code=EXIT_USAGE)
        # with --from the checkpoint fixes the shape, and `build_run` names any contradiction
        if from_checkpoint is None:
            _check_model_shape(dim, layers, heads, text_decoding)
        from cli.train_display import RichCallbacks, print_summary, progress_bar
        from omnilatent.threads import configure_threads
        from omnilatent.training import TrainConfig
        from omnilatent.training.hook_training import StartOptions, parse_hook_spec
        from omnilatent.training.run import (
            DataOptions,
            EvalOptions,
            ModelOptions,
            TrainRunOptions,
            build_run,
            run_training,
        )

        source = chosen[0]
        cpu_threads = configure_threads(threads)
        start = StartOptions(from_checkpoint,
                             tuple(parse_hook_spec(spec) for spec in hook_specs or ()),
                             freeze_base)
        options = TrainRunOptions(
            data=DataOptions(source, None if source == "synthetic" else str(sources[source]),
                             batch_size=batch_size, workers=workers,
                             tokenizer=tokenizer_path, max_text_len=max_text_len,
                             clip_duration=clip_duration, clip_stride=clip_stride),
            train=TrainConfig(steps=steps, lr=lr, grad_accum=grad_accum, amp=not no_amp,
                              compile=compile_model, device=device, seed=seed,
                              save_dir=save_dir, save_every=save_every, keep_last=keep_last,
                              log_interval=log_interval, eval_every=eval_every),
            model=ModelOptions(hidden_dim=dim, num_layers=layers, num_heads=heads,
                               text_decoding=text_decoding,
                               gradient_checkpointing=grad_checkpointing),
            evaluation=EvalOptions(eval_shards, eval_samples, label_pattern),
            schedule=_schedule(phase_schedule, {
                "warmup": warmup_frac, "crossmodal": crossmodal_frac,
                "temporal": temporal_frac, "grounding": grounding_frac,
                "joint": joint_frac}),
            resume=resume, fsdp=fsdp, start=start)
        progress = progress_bar()
        display = RichCallbacks(progress, steps, batch_size * grad_accum)
        run = build_run(options, display)

        def show(plan: ResumePlan) -> None:
            # once the save dir is claimed and the resume resolved: a refusal comes first
            if run.context.is_main:  # rank 0 shows
                _show_run(run, cpu_threads)
                _show_resume(plan, options)

        with _stop_handler() as stop, progress if run.context.is_main else nullcontext():
            result = run_training(run, should_stop=lambda: stop[0], on_resume=show)
        if run.context.is_main:  # rank 0 shows
            print_summary(display.records, save_dir, result)
        if result.interrupted:
            raise typer.Exit(130)

    run_command(body, usage=(UsageError,))
