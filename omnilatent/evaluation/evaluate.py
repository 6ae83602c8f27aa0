"""Measure what a model learned on held-out batches: task losses, cross-modal retrieval,
transcripts and reconstruction.

- **Task losses**: every curriculum task (`omnilatent.training.curriculum.TASK_NAMES`), averaged
  over samples (text tasks over reference tokens, on windows that have text).
- **Retrieval** (audio->video, video->audio, image->audio, audio->image): each query's
  prediction is ranked against the real targets of every evaluated window by correlation
  (`metrics.correlation_distance`; video and image at 1/4 resolution, which keeps the stored
  candidates at ~100 kB a window); the correct candidate is the query's own window, or, with
  ``labels``, any window of the same label (``retrieval_by_label``).
- **Text** (video, audio, image -> text): greedy, free-running transcripts of the windows that
  have text; token accuracy position by position and the character error rate (edits over
  reference characters, summed over windows).
- **Reconstruction**: PSNR of image and video auto-encoding (pixels in [-1, 1]); mean absolute
  log-mel error of audio auto-encoding, in log-mel units (natural log of mel power).

Evaluation consumes no random numbers and leaves the model in the mode it found it in, so
running it inside a training run does not change that run.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from omnilatent.evaluation.metrics import (
    character_errors,
    correlation_distance,
    psnr,
    retrieval_metrics,
    token_accuracy,
)
from omnilatent.inference.text import TextCodec
from omnilatent.model import OmniLatentModel
from omnilatent.training.curriculum import TASK_NAMES, build_task
from omnilatent.training.sources import check_data_fits_model
from pipeline.loader import ShardLoader, build_shard_loader
from pipeline.manifest import read_manifest
from pipeline.schema import MEL_SCALE
from pipeline.shardset import resolve_shards
from pipeline.split import EVAL, Split

RETRIEVAL_PAIRS = (("audio", "video"), ("video", "audio"), ("image", "audio"),
                   ("audio", "image"))
TEXT_SOURCES = ("video", "audio", "image")
POOL = 4  # spatial downsampling of stored video/image candidates


@dataclass(frozen=True)
class Caption:
    key: str
    source: str  # the window's video, from its metadata
    reference: str
    generated: str


@dataclass
class EvalReport:
    """``metrics`` is the JSON document of `omni eval --json`; ``captions`` every generated
    transcript per text task, for display and for benchmarks that check their content."""

    metrics: dict[str, Any]
    captions: dict[str, list[Caption]] = field(default_factory=dict)


def _pooled(modality: str, x: Tensor) -> Tensor:
    """A retrieval candidate or prediction, stored compactly on the CPU as float16."""
    if modality == "video":
        x = F.avg_pool3d(x.float(), (1, POOL, POOL))  # (B, 3, T, H/4, W/4)
    elif modality == "image":
        x = F.avg_pool2d(x.float(), POOL)  # (B, 3, S/4, S/4)
    return x.detach().to("cpu", torch.float16)


class _Sums:
    """Running weighted sums, averaged at the end."""

    def __init__(self) -> None:
        self.total: dict[str, float] = defaultdict(float)
        self.weight: dict[str, float] = defaultdict(float)

    def add(self, name: str, value: float, weight: float) -> None:
        self.total[name] += value * weight
        self.weight[name] += weight

    def means(self) -> dict[str, float]:
        return {k: self.total[k] / self.weight[k] for k in self.total if self.weight[k] > 0}


def _rows(batch: dict[str, Any], keep: Tensor) -> dict[str, Any]:
    """The rows of a batch where ``keep`` (B,) is true."""
    index = keep.nonzero().flatten().tolist()
    return {k: v[keep] if isinstance(v, Tensor) else [v[i] for i in index]
            for k, v in batch.items()}


@torch.no_grad()
def evaluate(
    model: OmniLatentModel,
    batches: Iterable[dict[str, Any]],
    text: TextCodec,
    max_samples: int | None = None,
    labels: Callable[[dict[str, Any]], object] | None = None,
    progress: Callable[[int], None] | None = None,
) -> EvalReport:
    """Evaluate ``model`` on ``batches`` (the shard loader's, unshuffled) up to ``max_samples``.

    ``labels`` maps a window's metadata to a class (e.g. the demo world's), adding retrieval
    counted by class. ``progress`` is called with the samples done so far after each batch.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    tasks = [build_task(name, model.config.tubelet_size) for name in TASK_NAMES]
    losses = _Sums()
    recon = _Sums()
    stored: dict[str, list[Tensor]] = defaultdict(list)
    metas: list[dict[str, Any]] = []
    text_counts: dict[str, list[int]] = {s: [0, 0, 0, 0] for s in TEXT_SOURCES}
    captions: dict[str, list[Caption]] = {f"{s}_to_text": [] for s in TEXT_SOURCES}
    seen = 0
    try:
        for batch in batches:
            if max_samples is not None and seen >= max_samples:
                break
            if max_samples is not None and seen + len(batch["__key__"]) > max_samples:
                batch = _rows(batch, torch.arange(len(batch["__key__"])) < max_samples - seen)
            batch = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
            size = len(batch["__key__"])
            has_text = batch["text"].ne(0).any(dim=1)  # (B,)
            with_text = _rows(batch, has_text) if bool(has_text.any()) else None
            for task in tasks:
                data = with_text if task.needs_text else batch
                if data is None:
                    continue
                source, target = task.inputs(data)
                loss = model(task.source, source, task.target, target=target)["loss"]
                weight = int(target.ne(0).sum()) if task.target == "text" else len(source)
                losses.add(task.name, float(loss), weight)
            for src, tgt in RETRIEVAL_PAIRS:
                prediction = model(src, batch[src], tgt, target=batch[tgt])["output"]
                stored[f"{src}_to_{tgt}"].append(_pooled(tgt, prediction))
            for modality in ("audio", "image", "video"):
                stored[f"real_{modality}"].append(_pooled(modality, batch[modality]))
            _reconstruction(model, batch, recon)
            if with_text is not None:
                _transcripts(model, with_text, text, text_counts, captions)
            metas.extend(batch["meta"])
            seen += size
            if progress is not None:
                progress(seen)
    finally:
        model.train(was_training)
    metrics = _metrics(seen, losses, recon, stored, metas, text_counts, labels)
    return EvalReport(metrics, captions)


def _reconstruction(model: OmniLatentModel, batch: dict[str, Any], sums: _Sums) -> None:
    size = len(batch["__key__"])
    for modality in ("image", "video"):
        out = model.reconstruct(modality, batch[modality])["output"]
        sums.add(f"{modality}.psnr", float(psnr(out, batch[modality]).mean()), size)
    mel = model.reconstruct("audio", batch["audio"])["output"]
    error = (mel.float() - batch["audio"].float()).abs().mean() * MEL_SCALE
    sums.add("audio.mel_l1", float(error), size)


def _transcripts(model: OmniLatentModel, batch: dict[str, Any], text: TextCodec,
                 counts: dict[str, list[int]], captions: dict[str, list[Caption]]) -> None:
    reference = batch["text"]  # (B, L)
    refs = [text.decode(row) for row in reference.cpu()]
    for source in TEXT_SOURCES:
        ids = model.generate_text(source, batch[source], reference.shape[1],
                                  vocab_limit=text.vocab_limit, eos_id=text.eos_id)  # (B, L)
        hits, total = token_accuracy(ids, reference)
        edits = chars = 0
        for row, ref, key, meta in zip(ids.cpu(), refs, batch["__key__"], batch["meta"],
                                       strict=True):
            generated = text.decode(row)
            e, c = character_errors(generated, ref)
            edits, chars = edits + e, chars + c
            captions[f"{source}_to_text"].append(
                Caption(key, str(meta.get("source", "")), ref, generated))
        tally = counts[source]
        tally[0], tally[1] = tally[0] + hits, tally[1] + total
        tally[2], tally[3] = tally[2] + edits, tally[3] + chars


def _metrics(seen: int, losses: _Sums, recon: _Sums, stored: dict[str, list[Tensor]],
             metas: list[dict[str, Any]], text_counts: dict[str, list[int]],
             labels: Callable[[dict[str, Any]], object] | None) -> dict[str, Any]:
    metrics: dict[str, Any] = {
        "samples": seen,
        "tasks": {name: {"loss": value} for name, value in losses.means().items()},
        "retrieval": {},
        "text": {},
        "reconstruction": {},
    }
    if seen == 0:
        return metrics
    label_list = None if labels is None else [labels(meta) for meta in metas]
    if label_list is not None:
        metrics["retrieval_by_label"] = {}
    for src, tgt in RETRIEVAL_PAIRS:
        name = f"{src}_to_{tgt}"
        distances = correlation_distance(torch.cat(stored[name]),
                                         torch.cat(stored[f"real_{tgt}"]))
        metrics["retrieval"][name] = retrieval_metrics(distances)
        if label_list is not None:
            metrics["retrieval_by_label"][name] = retrieval_metrics(distances, label_list)
    for source, (hits, total, edits, chars) in text_counts.items():
        if total:
            metrics["text"][f"{source}_to_text"] = {
                "token_accuracy": hits / total, "cer": edits / max(chars, 1),
                "tokens": total}
    for name, value in recon.means().items():
        modality, metric = name.split(".")
        metrics["reconstruction"].setdefault(modality, {})[metric] = value
    return metrics


# --------------------------------------------------------------------------- held-out shards
def held_out_split(shards: str) -> Split | None:
    """The split to evaluate on by default: a prepared folder's eval split when it has one,
    else every shard (a folder prepared from unseen videos, a tar, a pattern)."""
    folder = Path(shards)
    manifest = read_manifest(folder) if folder.is_dir() else None
    if manifest is not None and any(shard.split == EVAL for shard in manifest.shards):
        return EVAL
    return None


def eval_loader(shards: str, text: TextCodec, max_text_len: int, batch_size: int,
                split: Split | None) -> ShardLoader:
    """One pass over ``shards`` in file order, unshuffled, in the main process: the same
    windows in the same order on every call, so numbers from two checkpoints compare."""
    return build_shard_loader(shards, batch_size, tokenizer=text.encode,
                              max_text_len=max_text_len, seed=0, shuffle_shards=False,
                              shuffle_buffer=0, num_workers=0, epochs=1, split=split)


def check_shards_fit(shards: str, split: Split | None, model: OmniLatentModel) -> None:
    """Refuse shards whose sizes (frames, image, mel) differ from the model's, naming them."""
    expected = resolve_shards(shards, split=split).expected
    if expected is not None:
        check_data_fits_model(expected, model.config)


def shard_evaluator(shards: str, text: TextCodec, max_text_len: int, batch_size: int,
                    max_samples: int | None, split: Split | None = EVAL
                    ) -> Callable[[OmniLatentModel], dict[str, Any]]:
    """An evaluator for `Trainer`: the metrics of `evaluate` on ``shards`` (eval split)."""

    def run(model: OmniLatentModel) -> dict[str, Any]:
        loader = eval_loader(shards, text, max_text_len, batch_size, split)
        return evaluate(model, loader, text, max_samples=max_samples).metrics

    return run
