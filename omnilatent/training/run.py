"""The training application behind `omni train`, as a library: which data, which model, which
trainer, which held-out data and which checkpoint to start from, all from one validated
`TrainRunOptions`.

`build_run(options, display)` builds a `TrainRun` in visible steps, each a function of its
own so that a variant replaces one step and keeps the rest (a model loaded from a checkpoint
instead of `build_model`, another trainer instead of `build_trainer`):

    distributed set-up -> seeds -> starting checkpoint (`--from`: its model and tokenizer)
    -> tokenizer -> data source (shards or videos) -> model (sized by the data, or the
    checkpoint's) -> new hooks (and a frozen base) -> synthetic source (sized by the model)
    -> checkpoint card -> held-out data and evaluator -> callbacks (display + TensorBoard +
    hook export) -> trainer

`run_training(run)` claims the save dir, resumes as ``options.resume`` says, trains, and
releases the save dir, the event files and the process group whatever happens. Nothing here
prints: what a front end reports (the data, the held-out data or why there is none, the
checkpoints passed over on resume) comes back as values, the rest through the trainer's
callbacks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from omnilatent.checkpoint.card import CheckpointCard
from omnilatent.checkpoint.files import (
    StateCheck,
    checkpoint_dir,
    find_latest_checkpoint,
    list_checkpoints,
    read_state,
    weights_sha256,
)
from omnilatent.config import OmniLatentConfig, check_data_fits_model, model_sizes
from omnilatent.errors import CheckpointError, ConfigError, UsageError
from omnilatent.evaluation.evaluate import (
    check_shards_fit,
    held_out_split,
    shard_evaluator,
    source_labeller,
)
from omnilatent.inference.text import codec_for
from omnilatent.inference.trained import TrainedModel, load_trained
from omnilatent.model import OmniLatentModel
from omnilatent.training.config import TrainConfig
from omnilatent.training.curriculum import DEFAULT_SCHEDULE, CurriculumSampler, Schedule
from omnilatent.training.distributed import (
    DistributedContext,
    init_distributed,
    teardown_distributed,
)
from omnilatent.training.hook_training import (
    HookExport,
    StartOptions,
    add_hooks,
    check_origin,
    run_origin,
)
from omnilatent.training.rng import seed_everything
from omnilatent.training.sources import (
    DataSource,
    shard_source,
    synthetic_source,
    video_dir_source,
)
from omnilatent.training.tensorboard import TensorBoardCallbacks
from omnilatent.training.trainer import (
    CompositeCallbacks,
    Trainer,
    TrainerCallbacks,
    TrainResult,
    resolve_device,
)
from pipeline.modalities import MAX_TEXT_LEN, check_text_len
from pipeline.shards.split import Split
from pipeline.tokenizer import (
    BYTE_VOCAB_SIZE,
    TokenizerFn,
    byte_tokenizer,
    sentencepiece_tokenizer,
)

DATA_SOURCES = ("shards", "video-dir", "synthetic")
SYNTHETIC_MIN_SAMPLES = 1000  # a synthetic set holds at least this many samples


@dataclass(frozen=True)
class DataOptions:
    """Where batches come from: ``source`` is one of DATA_SOURCES and ``path`` what it reads,
    a prepared folder (or its shards as a pattern) for `shards`, a folder of videos for
    `video-dir`, nothing for `synthetic`. ``tokenizer``: a SentencePiece .model file (None:
    byte-level ids). ``clip_duration`` and ``clip_stride`` (seconds) window `video-dir`."""

    source: str
    path: str | None = None
    batch_size: int = 4
    workers: int = 0
    tokenizer: Path | None = None
    max_text_len: int = MAX_TEXT_LEN
    clip_duration: float = 2.0
    clip_stride: float = 1.0

    def __post_init__(self) -> None:
        if self.source not in DATA_SOURCES:
            raise ConfigError(f"data source must be one of {', '.join(DATA_SOURCES)}, "
                              f"got {self.source!r}")
        if self.source == "synthetic" and self.path is not None:
            raise ConfigError(f"synthetic data reads no files, got path {self.path!r}")
        if self.source != "synthetic" and not self.path:
            raise ConfigError(f"data source {self.source!r} needs a path (the "
                              + ("prepared folder or shard pattern" if self.source == "shards"
                                 else "folder of videos") + ")")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        check_text_len(self.max_text_len)
        if not isinstance(self.workers, int) or self.workers < 0:
            raise ConfigError(f"workers must be an integer >= 0, got {self.workers!r}")


@dataclass(frozen=True)
class ModelOptions:
    """The model's own choices, named as in OmniLatentConfig (which validates them). What the
    data fixes (frame, image and mel sizes) comes from the data, the vocabulary from the
    tokenizer (`model_config`). The defaults are OmniLatentConfig's."""

    hidden_dim: int = OmniLatentConfig.hidden_dim
    num_layers: int = OmniLatentConfig.num_layers
    num_heads: int = OmniLatentConfig.num_heads
    text_decoding: str = OmniLatentConfig.text_decoding
    gradient_checkpointing: bool = OmniLatentConfig.gradient_checkpointing


@dataclass(frozen=True)
class EvalOptions:
    """Held-out data: ``shards`` as given (all of them), or None for the eval split of the
    training shards when they have one; ``samples`` windows per evaluation; ``label_pattern``
    (`source_labeller`): retrieval also by class, as `omni eval --label-pattern` counts it.
    How often is ``TrainConfig.eval_every``."""

    shards: str | None = None
    samples: int = 256
    label_pattern: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.samples, int) or self.samples < 1:
            raise ConfigError(f"eval samples must be a positive integer, got {self.samples!r}")


@dataclass(frozen=True)
class TrainRunOptions:
    """Everything a training run is built from. ``schedule``: a curriculum (None: the default
    curriculum on shards and videos, all 16 modality pairs in turn on synthetic data);
    ``resume``: 'auto' (the newest usable checkpoint in the save dir), 'none' (refused when
    the save dir holds checkpoints) or a checkpoint path; ``fsdp``: under torchrun, shard the
    model instead of replicating it; ``start``: a trained checkpoint to start from instead
    of a fresh model, new hooks, a frozen base (`omnilatent.training.hook_training`)."""

    data: DataOptions
    train: TrainConfig
    model: ModelOptions = field(default_factory=ModelOptions)
    evaluation: EvalOptions = field(default_factory=EvalOptions)
    start: StartOptions = field(default_factory=StartOptions)
    schedule: Schedule | None = None
    resume: str = "none"
    fsdp: bool = False

    def __post_init__(self) -> None:
        if self.train.save_dir is None:
            raise ConfigError("train.save_dir must be set: a run writes its checkpoints, "
                              "metrics and event files there")
        if not self.resume:
            raise ConfigError("resume must be 'auto', 'none' or a checkpoint path, got ''")

    @property
    def save_dir(self) -> Path:
        assert self.train.save_dir is not None  # checked in __post_init__
        return self.train.save_dir


@dataclass(frozen=True)
class HeldOut:
    """Where a run evaluates: ``shards`` and ``split`` (None: every shard), or nowhere
    (``shards`` None); ``missing`` says why not when the training shards could have held
    an eval split but do not."""

    shards: str | None
    split: Split | None = None
    missing: str | None = None


@dataclass(frozen=True)
class ResumePlan:
    """Where a run starts: ``checkpoint`` (None: step 0), and the newer checkpoints that
    `auto` passed over, with why."""

    checkpoint: Path | None
    skipped: tuple[tuple[Path, str], ...] = ()


@dataclass
class TrainRun:
    """A run ready to train, with what a front end reports before it starts."""

    options: TrainRunOptions
    trainer: Trainer
    source: DataSource
    held_out: HeldOut
    board: TensorBoardCallbacks
    context: DistributedContext
    hook_export: HookExport | None = None  # the new hooks, exported at each checkpoint


def build_tokenizer(data: DataOptions) -> TokenizerFn:
    """The SentencePiece model of ``data.tokenizer``, else byte-level ids."""
    return sentencepiece_tokenizer(data.tokenizer) if data.tokenizer else byte_tokenizer


def build_data(options: TrainRunOptions, tokenizer: TokenizerFn) -> DataSource | None:
    """The shard or video source; None for synthetic data, which the model sizes instead
    (`synthetic_source`, built once the model is)."""
    data = options.data
    # batches bound for the trainer's CUDA device wait in pinned memory: async copies
    pin_memory = resolve_device(options.train.device).type == "cuda"
    common: dict[str, Any] = {"seed": options.train.seed, "workers": data.workers,
                              "tokenizer": tokenizer, "max_text_len": data.max_text_len,
                              "pin_memory": pin_memory}
    if data.source == "shards":
        assert data.path is not None  # DataOptions checks it
        return shard_source(data.path, data.batch_size, **common)
    if data.source == "video-dir":
        assert data.path is not None
        return video_dir_source(Path(data.path), data.batch_size,
                                clip_duration=data.clip_duration,
                                clip_stride=data.clip_stride, **common)
    return None


def model_config(options: TrainRunOptions, source: DataSource | None,
                 vocab_size: int) -> OmniLatentConfig:
    """The model's shape from ``options.model``, the sizes the data fixes (none for synthetic
    data) and the tokenizer's own vocabulary: a byte model needs 259 ids, not 32000 of which
    31741 could never be a target (their logits would only cost time and learning)."""
    sizes = {} if source is None or source.expected is None else model_sizes(source.expected)
    return OmniLatentConfig(vocab_size=vocab_size, **asdict(options.model), **sizes)


def build_model(options: TrainRunOptions, source: DataSource | None,
                tokenizer: TokenizerFn) -> OmniLatentModel:
    """A freshly initialised model (from the global torch seed) for ``source``'s data."""
    vocab_size = getattr(tokenizer, "vocab_size", BYTE_VOCAB_SIZE)
    return OmniLatentModel(model_config(options, source, vocab_size))


def from_checkpoint(options: TrainRunOptions) -> tuple[TrainRunOptions, TrainedModel | None]:
    """``options.start.checkpoint`` loaded (None without one), and ``options`` with its
    tokenizer. Its card fixes the text settings and its config the model's shape: a
    tokenizer, text length or shape that contradicts them is a UsageError naming both."""
    path = options.start.checkpoint
    if path is None:
        return options, None
    base = load_trained(path)
    card, data = base.card, options.data
    if data.max_text_len != card.max_text_len:
        raise UsageError(f"--from {path} was trained with text of up to {card.max_text_len} "
                         f"tokens, not {data.max_text_len}",
                         hint=f"pass --max-text-len {card.max_text_len}")
    if card.tokenizer_source is None:
        if data.tokenizer is not None:
            raise UsageError(f"--from {path} was trained on byte-level text, not with "
                             f"{data.tokenizer}", hint="drop --tokenizer")
    elif data.tokenizer is None:
        data = replace(data, tokenizer=card.tokenizer_source)
    elif data.tokenizer.read_bytes() != card.tokenizer_source.read_bytes():
        raise UsageError(f"--from {path} was trained with another SentencePiece model than "
                         f"{data.tokenizer}", hint="drop --tokenizer: the checkpoint's own "
                         "is used")
    config, defaults = base.model.config, ModelOptions()
    differing = [f"{item.name} {getattr(options.model, item.name)!r} (the checkpoint's: "
                 f"{getattr(config, item.name)!r})" for item in fields(ModelOptions)
                 if item.name != "gradient_checkpointing"
                 and getattr(options.model, item.name) != getattr(defaults, item.name)
                 and getattr(options.model, item.name) != getattr(config, item.name)]
    if differing:
        raise UsageError(f"--from {path} fixes the model's shape; asked for another "
                         + "; ".join(differing),
                         hint="drop --dim/--layers/--heads/--text-decoding")
    return replace(options, data=data), base


def base_model(options: TrainRunOptions, base: TrainedModel,
               source: DataSource | None) -> OmniLatentModel:
    """The checkpoint's model for ``source``'s data, refused when their sizes differ, with
    gradient checkpointing as ``options.model`` says (a runtime choice, not the shape)."""
    model = base.model
    if source is not None and source.expected is not None:
        try:
            check_data_fits_model(source.expected, model.config)
        except ConfigError as exc:
            raise UsageError(f"--from {options.start.checkpoint}: {exc}") from None
    checkpointing = options.model.gradient_checkpointing
    model.config = replace(model.config, gradient_checkpointing=checkpointing)
    model.gradient_checkpointing = checkpointing
    return model


def build_card(options: TrainRunOptions, source: DataSource) -> CheckpointCard:
    """What each checkpoint says about its tokenizer and data, for `omni eval`/`generate`."""
    data = options.data
    return CheckpointCard(
        tokenizer="sentencepiece" if data.tokenizer else "byte",
        max_text_len=data.max_text_len,
        data_config=None if source.prepare_config is None else source.prepare_config.to_dict(),
        tokenizer_source=data.tokenizer)


def held_out(options: TrainRunOptions) -> HeldOut:
    """The held-out data of a run: the evaluation shards as given, else the eval split of the
    training shards. No evaluation with ``eval_every`` 0, without shards, or when the training
    shards have no eval split; that last is a UsageError when ``eval_every`` was asked for."""
    explicit = options.evaluation.shards is not None
    shards = options.evaluation.shards if explicit else (
        options.data.path if options.data.source == "shards" else None)
    if options.train.eval_every == 0 or shards is None:
        return HeldOut(None)
    split = None if explicit else held_out_split(shards)
    if not explicit and split is None:
        message = (f"{shards} has no eval split (prepare with --eval-fraction > 0, or pass "
                   "--eval-shards): no evaluation during training")
        if options.train.eval_every is not None:
            raise UsageError(message)
        return HeldOut(None, missing=message)
    return HeldOut(shards, split)


def build_evaluator(options: TrainRunOptions, held: HeldOut, card: CheckpointCard,
                    model: OmniLatentModel,
                    on_samples: Callable[[dict[str, Tensor]], None] | None = None,
                    ) -> Callable[[OmniLatentModel], dict[str, Any]] | None:
    """The evaluation on ``held`` (None: no held-out data), refused up front when its sizes
    do not fit ``model``; ``on_samples`` receives a few predictions of each evaluation."""
    if held.shards is None:
        if options.evaluation.label_pattern is not None:
            raise UsageError("--label-pattern counts retrieval on held-out data, and this run "
                             "has none", hint=held.missing or "pass --eval-shards")
        return None
    check_shards_fit(held.shards, held.split, model)
    pattern = options.evaluation.label_pattern
    return shard_evaluator(held.shards, codec_for(card), options.data.max_text_len,
                           options.data.batch_size, options.evaluation.samples, held.split,
                           on_samples, None if pattern is None else source_labeller(pattern))


def build_trainer(options: TrainRunOptions, model: OmniLatentModel, source: DataSource,
                  callbacks: TrainerCallbacks, card: CheckpointCard,
                  evaluator: Callable[[OmniLatentModel], dict[str, Any]] | None,
                  context: DistributedContext) -> Trainer:
    """The curriculum trainer on shards and videos (or whenever a schedule is given), the
    plain trainer, all 16 modality pairs in turn, on synthetic data without one."""
    schedule = options.schedule or (None if options.data.source == "synthetic"
                                    else DEFAULT_SCHEDULE)
    sampler = None if schedule is None else CurriculumSampler(
        schedule, options.train.steps, model.config, source.corpus_has_text)
    return Trainer(model, options.train, source.loader, callbacks, card, evaluator,
                   options.data.source, context, sampler)


def build_run(options: TrainRunOptions, display: TrainerCallbacks | None = None) -> TrainRun:
    """Build every part of a run (see the module docstring). Each part that draws random
    numbers has its own stream of the seed (loaders and samplers their own generators), so
    the build order changes none. ``display`` receives the trainer's callbacks beside the
    TensorBoard writer, on the main process only."""
    context = init_distributed(options.train.device, options.fsdp)  # before the loaders
    seed_everything(options.train.seed)
    options, base = from_checkpoint(options)
    tokenizer = build_tokenizer(options.data)
    source = build_data(options, tokenizer)
    with torch.random.fork_rng(devices=[]):  # the initial weights: the seed's first draws
        torch.manual_seed(options.train.seed)
        model = (build_model(options, source, tokenizer) if base is None
                 else base_model(options, base, source))
        hooks = add_hooks(model, options.start)
    if source is None:
        train, data = options.train, options.data
        length = max(SYNTHETIC_MIN_SAMPLES, train.steps * data.batch_size * train.grad_accum)
        source = synthetic_source(model.config, data.batch_size, length=length,
                                  seed=train.seed, workers=data.workers, context=context)
    card = build_card(options, source)
    board = TensorBoardCallbacks(options.save_dir)
    held = held_out(options)
    evaluator = build_evaluator(options, held, card, model, board.eval_samples)
    export = HookExport([hook.name for hook in hooks], options.save_dir) if hooks else None
    parts = tuple(part for part in (display, board, export) if part is not None)
    callbacks = CompositeCallbacks(*parts) if context.is_main else TrainerCallbacks()
    trainer = build_trainer(options, model, source, callbacks, card, evaluator, context)
    weights = None if base is None else weights_sha256(read_state(base.path))
    trainer.origin = run_origin(options.start, weights, hooks)
    return TrainRun(options, trainer, source, held, board, context, export)


def resolve_resume(resume: str, save_dir: Path, check: StateCheck) -> ResumePlan:
    """The checkpoint ``resume`` names: 'none' starts at step 0 (a UsageError when
    ``save_dir`` already holds checkpoints: they would be overwritten or mixed), 'auto' the
    newest one ``check`` (the trainer's test of a checkpoint's state) accepts, passing over
    and naming the newer ones it refuses; else a checkpoint folder or a file in one. A
    UsageError, too, when ``save_dir`` holds checkpoints newer than the start, which the run
    would overwrite (`_refuse_overwriting`)."""
    if resume == "none":
        existing = list_checkpoints(save_dir)
        if existing:
            raise UsageError(
                f"{save_dir} already holds checkpoints (newest: {existing[0][1].name})",
                hint="pass --resume auto to continue that run, or choose another --save-dir")
        return ResumePlan(None)
    if resume == "auto":
        search = find_latest_checkpoint(save_dir, check=check)
        plan = ResumePlan(search.latest, tuple(search.skipped))
    else:
        try:
            plan = ResumePlan(checkpoint_dir(Path(resume)))
        except CheckpointError as exc:
            raise UsageError(f"--resume {resume}: {exc}",
                             hint="use 'auto', 'none' or a path like SAVE_DIR/step-00000100"
                             ) from None
    _refuse_overwriting(plan, save_dir)
    return plan


def _refuse_overwriting(plan: ResumePlan, save_dir: Path) -> None:
    """UsageError naming the checkpoints of ``save_dir`` newer than where ``plan`` starts: the
    run would reach their steps and write there, and a checkpoint that failed to verify may
    still hold the only copy of its weights, so it is the user's to move, never ours."""
    start = 0
    if plan.checkpoint is not None:
        try:
            start = read_state(plan.checkpoint)["step"]
        except CheckpointError:
            return  # the resume itself refuses it, saying why
    reasons = {path: why for path, why in plan.skipped}
    newer = [path for step, path in list_checkpoints(save_dir) if step > start]
    if not newer:
        return
    listed = "; ".join(f"{path.name}" + (f" ({reasons[path]})" if path in reasons else "")
                       for path in newer)
    moves = " && ".join(f"mv {path} {path}.unusable" for path in newer[:3])
    raise UsageError(f"{save_dir} holds checkpoint(s) newer than where this run starts "
                     f"(step {start}), which it would overwrite on reaching their steps: "
                     f"{listed}"[:2000],
                     hint=f"move them aside first ({moves}), or choose another --save-dir")


def run_training(run: TrainRun, should_stop: Callable[[], bool] = lambda: False,
                 on_resume: Callable[[ResumePlan], None] | None = None) -> TrainResult:
    """Claim the save dir (FolderInUseError, naming the holder, when another run writes it),
    resume as the options say (a UsageError when the checkpoint's run started elsewhere:
    `check_origin`), and train until the last step or until ``should_stop`` answers True
    (the step finishes and is checkpointed). ``on_resume`` sees where the run starts before
    anything is loaded."""
    trainer = run.trainer
    trainer.claim_save_dir()  # before the save dir is read: another run may be writing it
    try:
        plan = resolve_resume(run.options.resume, run.options.save_dir, trainer.checkpointer.check)
        if on_resume is not None:
            on_resume(plan)
        if plan.checkpoint is not None:
            check_origin(plan.checkpoint, read_state(plan.checkpoint), trainer.origin)
            trainer.resume(plan.checkpoint)
            if run.hook_export is not None and run.context.is_main:
                run.hook_export.on_checkpoint(plan.checkpoint)  # a kill may have beaten it
        return trainer.train(should_stop=should_stop)
    finally:
        run.board.close()
        trainer.release_save_dir()
        teardown_distributed()
