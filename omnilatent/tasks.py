"""Training tasks: which modality the model reads and which it must produce for a batch."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from omnilatent.checkpoint.json_values import is_count
from omnilatent.config import MODALITIES
from omnilatent.errors import CheckpointError, ConfigError, OmniLatentError
from pipeline.modalities import PAD_ID


def task_name(source: str, target: str) -> str:
    """The one name of the pair task ``source`` -> ``target``, in every mode (synthetic pairs,
    curriculum phases, eval records, metrics.jsonl keys, TensorBoard tags): ``audio_to_text``,
    or ``video_recon`` when a modality is rebuilt from itself."""
    return f"{source}_recon" if source == target else f"{source}_to_{target}"


def canonical_task_name(name: str) -> str:
    """``name`` as `task_name` spells it: runs before the names were unified logged synthetic
    pairs as ``audio->text`` (and ``video->video``); their checkpoints still resume."""
    source, arrow, target = name.partition("->")
    return task_name(source, target) if arrow else name


@dataclass(frozen=True)
class Task:
    """Predict ``target`` modality from ``source`` modality of the same batch."""

    source: str
    target: str
    label: str | None = None

    @property
    def name(self) -> str:
        return self.label or task_name(self.source, self.target)

    def inputs(self, batch: dict) -> tuple[Tensor, Tensor]:
        """(source tensor, target tensor) for this task."""
        return batch[self.source], batch[self.target]

    def rows(self, batch: dict) -> Tensor | None:
        """(B,) bool: the rows of ``batch`` that hold both the source and the target (see
        `row_mask`); None when every row does. A row without its source would teach the
        model to map nothing to an output (the mean), one without its target to predict a
        stand-in (silence for a video with no sound)."""
        masks = [mask for modality in {self.source, self.target}
                 if (mask := row_mask(batch, modality)) is not None]
        if not masks:
            return None
        keep = masks[0] if len(masks) == 1 else masks[0] & masks[1]
        return None if bool(keep.all()) else keep

    def served(self, batch: dict) -> dict:
        """``batch`` cut to the rows this task can use (`rows`): the batch itself when every
        row holds both modalities, so a full batch is never copied."""
        keep = self.rows(batch)
        if keep is None:
            return batch
        index = keep.nonzero().flatten().tolist()
        cut = {k: v[keep] if isinstance(v, Tensor) and v.dim() and v.shape[0] == keep.shape[0]
               else [v[i] for i in index] if isinstance(v, list) else v
               for k, v in batch.items()}
        text = cut.get("text")
        if isinstance(text, Tensor) and text.dim() == 2:  # as its rows alone would collate
            held = (text != PAD_ID).any(dim=0).nonzero()  # columns with a token
            cut["text"] = text[:, :int(held[-1]) + 1 if len(held) else 1]
        return cut


@dataclass(frozen=True)
class TemporalTask(Task):
    """Predict the future frames of a clip from its past frames.

    The clip (B, 3, T, H, W) is cut in two at a multiple of ``tubelet`` frames (8 | 8 at the
    defaults); the model reads the first part and must produce the second."""

    tubelet: int = 4

    def inputs(self, batch: dict) -> tuple[Tensor, Tensor]:
        video = batch["video"]
        cut = video.shape[2] // 2 // self.tubelet * self.tubelet
        if cut == 0:
            raise ConfigError(f"temporal prediction needs at least {2 * self.tubelet} frames, "
                              f"got {video.shape[2]}")
        return video[:, :, :cut], video[:, :, cut:]


# The named tasks of a curriculum (and of evaluation): pairs, and future frames.
PAIR_TASKS: dict[str, tuple[str, str]] = {"video_recon": ("video", "video"),
                                          "audio_recon": ("audio", "audio"),
                                          "video_to_audio": ("video", "audio"),
                                          "audio_to_video": ("audio", "video"),
                                          "video_to_text": ("video", "text"),
                                          "audio_to_text": ("audio", "text"),
                                          "image_to_text": ("image", "text"),
                                          "text_to_image": ("text", "image"),
                                          "image_to_audio": ("image", "audio"),
                                          "audio_to_image": ("audio", "image")}
TASK_NAMES = (*PAIR_TASKS, "temporal")


def build_task(name: str, tubelet: int) -> Task:
    if name == "temporal":
        return TemporalTask("video", "video", "temporal", tubelet=tubelet)
    if name not in PAIR_TASKS:
        raise ConfigError(f"unknown task {name!r}; known tasks: {', '.join(TASK_NAMES)}")
    source, target = PAIR_TASKS[name]
    return Task(source, target, name)


# The per-row flags of modalities a window may lack, set by the loaders' collate: text
# (no transcript there) and audio (a video without a sound stream, stored as silence).
ROW_FLAGS = {"text": "has_text", "audio": "has_audio"}


def row_mask(batch: dict, modality: str) -> Tensor | None:
    """(B,) bool: the rows of ``batch`` that hold ``modality`` (on the batch's device), or
    None when every row does by construction (image, video; audio without a flag). Text
    without a ``has_text`` flag counts the rows with a token that is not padding."""
    flag = batch.get(ROW_FLAGS.get(modality, ""))
    if isinstance(flag, Tensor):
        return flag.bool()
    value = batch.get(modality)
    if modality == "text" and isinstance(value, Tensor):
        return (value != PAD_ID).any(dim=1)
    return None


def servable_pairs(batch: dict) -> set[tuple[str, str]]:
    """The (source, target) pairs the batch can serve: those at least one row holds both
    modalities of (`Task.rows`). Pairs, not modalities: a batch whose sound and transcripts sit
    in different rows serves audio tasks and text tasks, but no row of it could train
    audio_to_text."""
    held = [modality for modality in MODALITIES if isinstance(batch.get(modality), Tensor)]
    return {(source, target) for source in held for target in held
            if (keep := Task(source, target).rows(batch)) is None or bool(keep.any())}


MAX_TURN = 2**62  # a sampler's counters stay far below this


class TaskSampler(ABC):
    """Chooses each step's task for one `Trainer`; a stateful part of its checkpoints
    ("sampler" in state.json). `PairSampler` (every modality pair in turn) and the curriculum
    (`omnilatent.training.curriculum.CurriculumSampler`) are the two. A sampler draws from no
    global random generator, so where it is built does not change any random stream."""

    @abstractmethod
    def select(self, step: int, present: set[tuple[str, str]],
               notify: Callable[[str], None]) -> Task | None:
        """The task of step index ``step`` given the (source, target) pairs every batch of the
        step can serve (`servable_pairs`; None: skip the step); ``notify`` tells the user (e.g.
        a phase begins)."""

    def notes(self) -> list[str]:
        """What the user is told when training starts."""
        return []

    def log_fields(self, step: int) -> dict[str, Any]:
        """Extra fields of the metrics record after ``step`` steps."""
        return {}

    @abstractmethod
    def mismatch(self, state: Any) -> str | None:
        """Why ``state``, the other kind of sampler's, cannot be continued (else None)."""

    @abstractmethod
    def check_state_dict(self, state: Any) -> None:
        """CheckpointError if ``load_state_dict`` could not take ``state`` (of this kind)."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]: ...

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class PairSampler(TaskSampler):
    """A balanced, periodic order over the 16 (source, target) pairs.

    Turn k trains target ``MODALITIES[k % 4]`` from source ``order[target][(k // 4) % 4]``,
    where each target's source order is a seeded permutation. So any 4 consecutive turns hold
    one task per target and any 16 consecutive turns hold every pair exactly once: a loss
    averaged over 16 steps always means the same mix. (Uniform random draws would make such an
    average swing with how many text steps, cross-entropy ~10, it happened to contain.)
    Pairs the batch cannot serve are passed over, and the turn moves on."""

    def __init__(self, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        n = len(MODALITIES)
        self.order = {t: [MODALITIES[i] for i in torch.randperm(n, generator=generator).tolist()]
                      for t in MODALITIES}
        self.turn = 0

    def choose(self, present: set[tuple[str, str]]) -> Task:
        """The next pair in ``present`` (`servable_pairs`)."""
        if not present:
            raise OmniLatentError("no modality (text, audio, image or video) is held by every "
                                  "batch of the step; check the data source")
        n = len(MODALITIES)
        while True:
            target = MODALITIES[self.turn % n]
            source = self.order[target][(self.turn // n) % n]
            self.turn += 1
            if (source, target) in present:
                return Task(source, target)

    def select(self, step: int, present: set[tuple[str, str]],
               notify: Callable[[str], None]) -> Task:
        return self.choose(present)

    def state_dict(self) -> dict[str, Any]:
        return {"turn": self.turn}

    def mismatch(self, state: Any) -> str | None:
        if isinstance(state, dict) and "round_robin" in state:
            return ("holds curriculum state: it was written by a run with a phase schedule; "
                    "resume it with one, or start a new run in another save dir")
        return None

    def check_state_dict(self, state: Any) -> None:
        if self.mismatch(state):
            return
        if not (isinstance(state, dict) and is_count(state.get("turn"))
                and state["turn"] <= MAX_TURN):
            raise CheckpointError(f"'sampler' must be {{turn: an integer from 0 to {MAX_TURN}}}")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.turn = int(state["turn"])


def common_pairs(batches: list[dict]) -> set[tuple[str, str]]:
    """The pairs every one of ``batches`` can serve (see `servable_pairs`)."""
    return set.intersection(*(servable_pairs(batch) for batch in batches))


def content_tokens(modality: str, x: Tensor, audio_stride: int, patch: int, tubelet: int) -> int:
    """Backbone tokens this input produces (text counts non-padding tokens)."""
    if modality == "text":
        return int((x != PAD_ID).sum())
    batch = x.shape[0]
    if modality == "audio":
        return batch * -(-x.shape[-1] // audio_stride)
    if modality == "image":
        return batch * (x.shape[-1] // patch) * (x.shape[-2] // patch)
    return batch * (x.shape[2] // tubelet) * (x.shape[-1] // patch) * (x.shape[-2] // patch)
