"""`omni train`: build the model and a data source, then run the trainer with live progress.

The options live here; torch-backed modules are imported when the command runs (see
`cli/train_display.py`), so `omni --help` lists every command without loading torch.
"""

from __future__ import annotations

import copy
import signal
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, get_args

import typer

from cli.console import console
from cli.errors import EXIT_USAGE, CLIError, run_command
from cli.options import Device, SaveDir, Seed, Workers

if TYPE_CHECKING:
    from collections.abc import Callable

    from torch import Tensor

    from omnilatent.inference.text import TextCodec
    from omnilatent.model import OmniLatentModel
    from omnilatent.training.checkpoint import StateCheck
    from omnilatent.training.curriculum import Schedule

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

  Default 140M model on a GPU with AMP and gradient checkpointing:
    [cyan]omni train --shards data/prepared --steps 5000 --batch-size 4 --device cuda \\
      --grad-checkpointing --save-dir runs/base --save-every 500[/]
"""

# `omni train --help` groups its options under these headings
DATA, MODEL, CURRICULUM = "Data", "Model", "Curriculum"
OPTIMISATION, CHECKPOINTS, RUNTIME = "Optimisation", "Checkpoints and evaluation", "Runtime"


def _in_panel(alias: Any, panel: str) -> Any:
    """A shared option alias of `cli.options` (``Annotated[type, OptionInfo]``), shown under
    ``panel`` here: typer takes one OptionInfo per parameter, so a copy carries the panel."""
    base, info = get_args(alias)
    info = copy.copy(info)
    info.rich_help_panel = panel
    return Annotated[base, info]


def _resolve_resume(resume: str, save_dir: Path, check: StateCheck) -> Path | None:
    """The checkpoint to resume from (None: start at step 0); ``check`` is the trainer's test
    of a checkpoint's state, so `auto` passes over (and names) those it could not restore."""
    from omnilatent.errors import CheckpointError
    from omnilatent.training.checkpoint import (
        checkpoint_dir,
        find_latest_checkpoint,
        list_checkpoints,
    )

    if resume == "none":
        existing = list_checkpoints(save_dir)
        if existing:
            raise CLIError(
                f"{save_dir} already holds checkpoints (newest: {existing[0][1].name})",
                hint="pass --resume auto to continue that run, or choose another --save-dir",
                exit_code=EXIT_USAGE,
            )
        return None
    if resume == "auto":
        search = find_latest_checkpoint(save_dir, check=check)
        for path, reason in search.skipped:
            console.print(f"[yellow]skipping unusable checkpoint[/] {path.name}: {reason}")
        if search.latest is None:
            console.print(f"no complete checkpoint in {save_dir}: starting from step 0")
        return search.latest
    try:
        return checkpoint_dir(Path(resume))
    except CheckpointError as exc:
        raise CLIError(f"--resume {resume}: {exc}",
                       hint="use 'auto', 'none' or a path like SAVE_DIR/step-00000100",
                       exit_code=EXIT_USAGE) from None


def _install_stop_handler() -> list[bool]:
    """First Ctrl-C / SIGTERM: finish the step, checkpoint, exit. Second Ctrl-C: abort."""
    flag = [False]

    def handler(signum: int, _frame: object) -> None:
        if flag[0] and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag[0] = True
        console.print("[yellow]stop requested: saving a checkpoint after this step…[/]")

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return flag


def _schedule(phase_schedule: str | None, fracs: dict[str, float | None]) -> Schedule | None:
    from omnilatent.training.curriculum import default_schedule, parse_schedule

    given = {name: value for name, value in fracs.items() if value is not None}
    if given and phase_schedule not in (None, "default"):
        raise CLIError("use either --phase-schedule or the --*-frac shortcuts, not both",
                       exit_code=EXIT_USAGE)
    if given:
        return default_schedule(given)
    return None if phase_schedule is None else parse_schedule(phase_schedule)


def _evaluator(shards: str | None, explicit: bool, eval_every: int | None, samples: int,
               batch_size: int, codec: TextCodec, max_text_len: int,
               model: OmniLatentModel, on_samples: Callable[[dict[str, Tensor]], None]
               ) -> Callable[[OmniLatentModel], dict] | None:
    """The held-out evaluation of a run, or None (with a note) when there is no held-out
    data: `--eval-shards` as given (all its shards), else the eval split of `--shards`.
    ``on_samples`` receives a few predictions of each evaluation."""
    from omnilatent.evaluation.evaluate import check_shards_fit, held_out_split, shard_evaluator

    if eval_every == 0 or shards is None:
        return None
    split = None if explicit else held_out_split(shards)
    if not explicit and split is None:
        message = (f"{shards} has no eval split (prepare with --eval-fraction > 0, or pass "
                   "--eval-shards): no evaluation during training")
        if eval_every is not None:
            raise CLIError(message, exit_code=EXIT_USAGE)
        console.print(f"[yellow]{message}[/]", soft_wrap=True)
        return None
    check_shards_fit(shards, split, model)
    console.print(f"eval: up to {samples} windows of {shards}"
                  + ("" if split is None else f" ({split} split)"), soft_wrap=True)
    return shard_evaluator(shards, codec, max_text_len, batch_size, samples, split,
                           on_samples)


def _frac(name: str) -> Any:
    return typer.Option(f"--{name}-frac", min=0.0, max=1.0, rich_help_panel=CURRICULUM,
                        help=f"Share of steps for the {name} phase (shortcut; "
                        + ("takes what the others leave when omitted)." if name == "joint"
                           else "others keep their default share)."))


def train(
    synthetic: Annotated[bool, typer.Option(
        "--synthetic", rich_help_panel=DATA,
        help="Train on seeded synthetic multimodal data (checks pipeline and memory).")]
    = False,
    shards: Annotated[str | None, typer.Option(
        "--shards", rich_help_panel=DATA, help="A folder written by `omni prepare` (or its "
        "shards as a brace pattern): stream its samples.")] = None,
    video_dir: Annotated[Path | None, typer.Option(
        "--video-dir", rich_help_panel=DATA,
        help="Decode the videos of this folder on the fly (no shards).")] = None,
    tokenizer_path: Annotated[Path | None, typer.Option(
        "--tokenizer", rich_help_panel=DATA,
        help="A SentencePiece .model file (default: byte-level tokens).")] = None,
    max_text_len: Annotated[int, typer.Option(
        "--max-text-len", rich_help_panel=DATA, min=1, help="Tokens kept per transcript.")]
    = 128,
    clip_duration: Annotated[float, typer.Option(
        "--clip-duration", rich_help_panel=DATA, help="--video-dir: seconds per clip.")] = 2.0,
    clip_stride: Annotated[float, typer.Option(
        "--clip-stride", rich_help_panel=DATA,
        help="--video-dir: seconds between clip starts.")] = 1.0,
    workers: _in_panel(Workers, DATA) = 0,
    dim: Annotated[int, typer.Option("--dim", rich_help_panel=MODEL, min=8,
                                     help="Model width.")] = 768,
    layers: Annotated[int, typer.Option("--layers", rich_help_panel=MODEL, min=1)] = 12,
    heads: Annotated[int, typer.Option("--heads", rich_help_panel=MODEL, min=1)] = 12,
    text_decoding: Annotated[str, typer.Option(
        "--text-decoding", rich_help_panel=MODEL, help="autoregressive (default) or parallel "
        "text output (see the README's measurement).")] = "autoregressive",
    phase_schedule: Annotated[str | None, typer.Option(
        "--phase-schedule", rich_help_panel=CURRICULUM, help="Curriculum: 'default', an "
        "inline spec like 'warmup=0.1,crossmodal=0.25,temporal=0.25,grounding=0.15,joint=0.25'"
        ", or a .toml/.json file. Default for --shards/--video-dir; without it --synthetic "
        "trains all 16 modality pairs in turn.")] = None,
    warmup_frac: Annotated[float | None, _frac("warmup")] = None,
    crossmodal_frac: Annotated[float | None, _frac("crossmodal")] = None,
    temporal_frac: Annotated[float | None, _frac("temporal")] = None,
    grounding_frac: Annotated[float | None, _frac("grounding")] = None,
    joint_frac: Annotated[float | None, _frac("joint")] = None,
    steps: Annotated[int, typer.Option(
        "--steps", "--total-steps", rich_help_panel=OPTIMISATION, min=1,
        help="Optimizer steps to train for.")] = 1000,
    batch_size: Annotated[int, typer.Option("--batch-size", rich_help_panel=OPTIMISATION,
                                            min=1)] = 4,
    grad_accum: Annotated[int, typer.Option(
        "--grad-accum", rich_help_panel=OPTIMISATION, min=1,
        help="Batches accumulated per step.")] = 1,
    lr: Annotated[float, typer.Option("--lr", rich_help_panel=OPTIMISATION, min=0.0,
                                      help="Peak learning rate.")] = 6e-4,
    save_dir: _in_panel(SaveDir, CHECKPOINTS) = Path("runs/omni"),
    save_every: Annotated[int, typer.Option(
        "--save-every", rich_help_panel=CHECKPOINTS, min=0,
        help="Checkpoint every N steps (0 = only at the end).")] = 0,
    keep_last: Annotated[int, typer.Option("--keep-last", rich_help_panel=CHECKPOINTS, min=0,
                                           help="Checkpoints kept (0 = all).")] = 3,
    resume: Annotated[str, typer.Option(
        "--resume", rich_help_panel=CHECKPOINTS, help="'auto' (newest complete checkpoint in "
        "--save-dir), 'none', or a checkpoint path.")] = "none",
    eval_every: Annotated[int | None, typer.Option(
        "--eval-every", rich_help_panel=CHECKPOINTS, min=0, help="Evaluate on held-out data "
        "every N steps (default: at each checkpoint; 0: never). Records go to metrics.jsonl.")]
    = None,
    eval_shards: Annotated[str | None, typer.Option(
        "--eval-shards", rich_help_panel=CHECKPOINTS, help="Held-out data to evaluate on "
        "(default: the eval split of --shards, when it has one).")] = None,
    eval_samples: Annotated[int, typer.Option(
        "--eval-samples", rich_help_panel=CHECKPOINTS, min=1, help="Windows per evaluation "
        "(the first ones, always the same).")] = 256,
    device: _in_panel(Device, RUNTIME) = "auto",
    no_amp: Annotated[bool, typer.Option(
        "--no-amp", rich_help_panel=RUNTIME,
        help="Disable mixed precision on GPU (it is always off on CPU).")] = False,
    grad_checkpointing: Annotated[bool, typer.Option(
        "--grad-checkpointing/--no-grad-checkpointing", rich_help_panel=RUNTIME,
        help="Recompute activations in backward to save memory.")] = False,
    compile_model: Annotated[bool, typer.Option(
        "--compile", rich_help_panel=RUNTIME,
        help="torch.compile each transformer block (all tasks share its graphs; hooks "
             "work).")] = False,
    fsdp: Annotated[bool, typer.Option(
        "--fsdp", rich_help_panel="Runtime", help="Under torchrun: shard the model over the "
        "processes (FSDP2) instead of replicating it (DDP), for models too big for one GPU.")]
    = False,
    log_interval: Annotated[int, typer.Option(
        "--log-interval", rich_help_panel=RUNTIME, min=1, help="Steps per metrics line (16 = "
        "one cycle of all modality pairs).")] = 16,
    seed: _in_panel(Seed, RUNTIME) = 0,
) -> None:
    """Train OmniLatent on prepared shards, raw videos or synthetic data. Stop with Ctrl-C or
    SIGTERM: the current step finishes and a checkpoint is written, so `--resume auto`
    continues exactly where it stopped."""

    def body() -> None:
        # checked before torch is imported (seconds): a usage error needs no model
        chosen = [name for name, on in (("--synthetic", synthetic), ("--shards", shards),
                                        ("--video-dir", video_dir)) if on]
        if len(chosen) != 1:
            raise CLIError("choose exactly one data source" + (f" (got {', '.join(chosen)})"
                                                               if chosen else ""),
                           hint="pass --synthetic, --shards OUT_DIR or --video-dir VIDEOS",
                           exit_code=EXIT_USAGE)
        from cli.train_display import (
            CompositeCallbacks,
            RichCallbacks,
            print_summary,
            progress_bar,
        )
        from omnilatent import OmniLatentConfig, OmniLatentModel
        from omnilatent.inference.card import CheckpointCard
        from omnilatent.inference.text import codec_for
        from omnilatent.training import (
            SyntheticMultimodalDataset,
            TrainConfig,
            Trainer,
            TrainerCallbacks,
            build_dataloader,
        )
        from omnilatent.training.curriculum import DEFAULT_SCHEDULE, CurriculumTrainer
        from omnilatent.training.distributed import (
            init_distributed,
            rank_loader,
            teardown_distributed,
        )
        from omnilatent.training.rng import seed_everything
        from omnilatent.training.sources import model_sizes, shard_source, video_dir_source
        from omnilatent.training.tensorboard import TensorBoardCallbacks
        from omnilatent.training.trainer import resolve_device
        from pipeline.tokenizer import BYTE_VOCAB_SIZE, byte_tokenizer, sentencepiece_tokenizer

        schedule = _schedule(phase_schedule, {
            "warmup": warmup_frac, "crossmodal": crossmodal_frac, "temporal": temporal_frac,
            "grounding": grounding_frac, "joint": joint_frac})
        tokenizer = (sentencepiece_tokenizer(tokenizer_path) if tokenizer_path
                     else byte_tokenizer)
        # The tokenizer's own vocabulary: a byte model needs 259 ids, not 32000 of which
        # 31741 can never be a target (their logits only cost time and learning).
        vocab = getattr(tokenizer, "vocab_size", BYTE_VOCAB_SIZE)
        config = TrainConfig(steps=steps, lr=lr, grad_accum=grad_accum, amp=not no_amp,
                             compile=compile_model, device=device, seed=seed,
                             save_dir=save_dir, save_every=save_every, keep_last=keep_last,
                             log_interval=log_interval, eval_every=eval_every)
        context = init_distributed(device, fsdp)  # before the loaders: they split by rank
        seed_everything(seed)
        sizes: dict[str, int] = {}
        # batches bound for the trainer's CUDA device wait in pinned memory: async copies
        pin_memory = resolve_device(device).type == "cuda"
        if shards is not None:
            source = shard_source(shards, batch_size, seed=seed, workers=workers,
                                  tokenizer=tokenizer, max_text_len=max_text_len,
                                  pin_memory=pin_memory)
        elif video_dir is not None:
            source = video_dir_source(video_dir, batch_size, seed=seed, workers=workers,
                                      tokenizer=tokenizer, max_text_len=max_text_len,
                                      clip_duration=clip_duration, clip_stride=clip_stride,
                                      pin_memory=pin_memory)
        else:
            source = None
        if source is not None:
            sizes = model_sizes(source.expected)
            schedule = schedule or DEFAULT_SCHEDULE
            console.print(f"data: {source.description}", soft_wrap=True)
        model_config = OmniLatentConfig(hidden_dim=dim, num_layers=layers, num_heads=heads,
                                        vocab_size=vocab, text_decoding=text_decoding,
                                        gradient_checkpointing=grad_checkpointing, **sizes)
        model = OmniLatentModel(model_config)
        if source is None:
            dataset = SyntheticMultimodalDataset(
                model_config, length=max(1000, steps * batch_size * grad_accum), seed=seed)
            loader = (rank_loader(dataset, batch_size, context, seed=seed, num_workers=workers)
                      if context.enabled
                      else build_dataloader(dataset, batch_size, seed=seed, num_workers=workers))
            has_text = True
        else:
            loader, has_text = source.loader, source.corpus_has_text
        card = CheckpointCard(
            tokenizer="sentencepiece" if tokenizer_path else "byte", max_text_len=max_text_len,
            data_config=None if source is None or source.prepare_config is None
            else source.prepare_config.to_dict(),
            tokenizer_source=tokenizer_path)
        board = TensorBoardCallbacks(save_dir)
        evaluator = _evaluator(eval_shards or shards, eval_shards is not None, eval_every,
                               eval_samples, batch_size, codec_for(card), max_text_len, model,
                               board.eval_samples)
        progress = progress_bar()
        callbacks = RichCallbacks(progress, steps, batch_size * grad_accum)
        console.print(f"tensorboard: tensorboard --logdir {save_dir}", soft_wrap=True)
        composite = (CompositeCallbacks(callbacks, board) if context.is_main  # rank 0 shows
                     else TrainerCallbacks())
        data_source = chosen[0].removeprefix("--")
        if schedule is None:
            trainer = Trainer(model, config, loader, composite, card, evaluator, data_source,
                              context)
        else:
            trainer = CurriculumTrainer(model, config, loader, schedule=schedule,
                                        corpus_has_text=has_text, callbacks=composite,
                                        card=card, evaluator=evaluator, data_source=data_source,
                                        distributed=context)
        trainer.claim_save_dir()  # before the save dir is read: another run may be writing it
        try:
            checkpoint = _resolve_resume(resume, save_dir, trainer.check_state)
            if checkpoint is not None:
                trainer.resume(checkpoint)
            stop = _install_stop_handler()
            with progress if context.is_main else nullcontext():
                result = trainer.train(should_stop=lambda: stop[0])
        finally:
            board.close()
            trainer.release_save_dir()
            teardown_distributed()
        if context.is_main:
            print_summary(callbacks.records, save_dir, result)
        if result.interrupted:
            raise typer.Exit(130)

    run_command(body)
