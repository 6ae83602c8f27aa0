"""Measure what a model learned on held-out batches: task losses, cross-modal retrieval,
transcripts and reconstruction, as README.md defines them ("Evaluating"). Retrieval candidates
are stored at 1/4 resolution (`POOL`), ~100 kB a window.

Evaluation consumes no random numbers and leaves the model in the mode it found it in, so
running it inside a training run does not change that run."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from omnilatent.config import check_data_fits_model
from omnilatent.errors import UsageError
from omnilatent.evaluation.metrics import (
    character_errors,
    correlation_distance,
    psnr,
    retrieval_metrics,
    token_accuracy,
)
from omnilatent.inference.text import TextCodec
from omnilatent.model import OmniLatentModel
from omnilatent.tasks import TASK_NAMES, Task, build_task
from pipeline.loader.shard_loader import ShardLoader, build_shard_loader
from pipeline.normalize import batch_to_device
from pipeline.shards.manifest import read_manifest
from pipeline.shards.schema import MEL_SCALE
from pipeline.shards.shardset import ShardSet, resolve_shards
from pipeline.shards.split import EVAL, Split

RETRIEVAL_PAIRS = (("audio", "video"), ("video", "audio"), ("image", "audio"), ("audio", "image"))
# Each retrieval pair and reconstruction is also a curriculum task: its predictions are the
# outputs of that task's forward pass, not a second one.
RETRIEVAL_TASKS = {f"{source}_to_{target}": target for source, target in RETRIEVAL_PAIRS}
RECONSTRUCTION_TASKS = ("video_recon", "audio_recon")
TEXT_SOURCES = ("video", "audio", "image")
POOL = 4  # spatial downsampling of stored video/image candidates
# Predictions kept for a look (e.g. in TensorBoard): one per output modality, a few windows
SAMPLE_TASKS = ("audio_to_image", "audio_to_video", "video_to_audio")
SAMPLE_WINDOWS = 2


@dataclass(frozen=True)
class Caption:
    key: str
    source: str  # the window's video, from its metadata
    reference: str
    generated: str


@dataclass
class EvalReport:
    """``metrics`` is the JSON document of `omni eval --json`; ``captions`` every generated
    transcript per text task, for display and for benchmarks that check their content;
    ``samples`` the predictions of the first ``SAMPLE_WINDOWS`` windows for each of
    ``SAMPLE_TASKS`` (float32 on the CPU: image ``(N, 3, H, W)`` and video
    ``(N, 3, T, H, W)`` in [-1, 1], log-mel ``(N, M, T)``), to be looked at."""

    metrics: dict[str, Any]
    captions: dict[str, list[Caption]] = field(default_factory=dict)
    samples: dict[str, Tensor] = field(default_factory=dict)


def _pooled(modality: str, x: Tensor) -> Tensor:
    """A retrieval candidate or prediction, stored compactly on the CPU as float16."""
    if modality == "video":
        x = F.avg_pool3d(x.float(), (1, POOL, POOL))  # (B, 3, T, H/4, W/4)
    elif modality == "image":
        x = F.avg_pool2d(x.float(), POOL)  # (B, 3, S/4, S/4)
    return x.detach().to("cpu", torch.float16)


@dataclass
class _TextTally:
    """Counts over the windows of one text task, turned into rates at the end."""

    hits: int = 0  # generated tokens equal to the reference's
    tokens: int = 0  # reference tokens
    edits: int = 0  # character edits from generated to reference text
    chars: int = 0  # reference characters


@dataclass
class _Sums:
    """Running weighted sums, averaged at the end."""

    total: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    weight: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))

    def add(self, name: str, value: float, weight: float) -> None:
        self.total[name] += value * weight
        self.weight[name] += weight

    def means(self) -> dict[str, float]:
        return {k: self.total[k] / self.weight[k] for k in self.total if self.weight[k] > 0}


@torch.no_grad()
def evaluate(model: OmniLatentModel, batches: Iterable[dict[str, Any]], text: TextCodec,
             max_samples: int | None = None,
             labels: Callable[[dict[str, Any]], object] | None = None,
             progress: Callable[[int], None] | None = None) -> EvalReport:
    """Evaluate ``model`` on ``batches`` (the shard loader's, unshuffled) up to ``max_samples``.

    ``labels`` maps a window's metadata to a class (e.g. the demo world's), adding retrieval
    counted by class. ``progress`` is called with the samples done so far after each batch."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    tasks = [build_task(name, model.config.tubelet_size) for name in TASK_NAMES]
    losses = _Sums()
    recon = _Sums()
    stored: dict[str, list[Tensor]] = defaultdict(list)
    metas: dict[str, list[dict[str, Any]]] = defaultdict(list)  # per retrieval task
    tallies = {source: _TextTally() for source in TEXT_SOURCES}
    captions: dict[str, list[Caption]] = {f"{s}_to_text": [] for s in TEXT_SOURCES}
    samples: dict[str, Tensor] = {}
    seen = 0
    try:
        for batch in batches:
            if max_samples is not None and seen >= max_samples:
                break
            if max_samples is not None and seen + len(batch["__key__"]) > max_samples:
                batch = {k: v[:max_samples - seen] for k, v in batch.items()}  # its first rows
            batch = batch_to_device(batch, device)  # model units from here: metrics too
            for task in tasks:  # each only where its source and target exist
                data = task.served(batch)
                if not data["__key__"]:
                    continue
                source, target = task.inputs(data)
                out = model(task.source, source, task.target, target=target)
                weight = int(target.ne(0).sum()) if task.target == "text" else len(source)
                losses.add(task.name, float(out["loss"]), weight)
                if task.name in RETRIEVAL_TASKS:  # candidates: the real targets of its rows
                    stored[task.name].append(_pooled(task.target, out["output"]))
                    stored[f"{task.name}.real"].append(_pooled(task.target, target))
                    metas[task.name].extend(data["meta"])
                if task.name in SAMPLE_TASKS and task.name not in samples:
                    samples[task.name] = out["output"][:SAMPLE_WINDOWS].detach().float().cpu()
                elif task.name in RECONSTRUCTION_TASKS:
                    _reconstruction(task.target, out["output"], target, recon)
            image = model.reconstruct("image", batch["image"])["output"]  # not a task
            _reconstruction("image", image, batch["image"], recon)
            _transcripts(model, batch, text, tallies, captions)
            seen += len(batch["__key__"])
            if progress is not None:
                progress(seen)
    finally:
        model.train(was_training)
    return EvalReport(_metrics(seen, losses, recon, stored, metas, tallies, labels), captions,
                      samples)


def _reconstruction(modality: str, output: Tensor, target: Tensor, sums: _Sums) -> None:
    """PSNR of pictures, mean absolute log-mel error of sound, weighted by batch rows."""
    if modality == "audio":
        error = (output.float() - target.float()).abs().mean() * MEL_SCALE
        sums.add("audio.mel_l1", float(error), len(target))
    else:
        sums.add(f"{modality}.psnr", float(psnr(output, target).mean()), len(target))


def _transcripts(model: OmniLatentModel, batch: dict[str, Any], text: TextCodec,
                 tallies: dict[str, _TextTally], captions: dict[str, list[Caption]]) -> None:
    for source in TEXT_SOURCES:  # the rows with a transcript and the source (e.g. sound)
        rows = Task(source, "text").served(batch)
        if not rows["__key__"]:
            continue
        reference = rows["text"]  # (B, L)
        refs = [text.decode(row) for row in reference.cpu()]
        ids = model.generate_text(source, rows[source], reference.shape[1],
                                  vocab_limit=text.vocab_limit, eos_id=text.eos_id)  # (B, L)
        tally = tallies[source]
        hits, tokens = token_accuracy(ids, reference)
        tally.hits, tally.tokens = tally.hits + hits, tally.tokens + tokens
        for row, ref, key, meta in zip(ids.cpu(), refs, rows["__key__"], rows["meta"],
                                       strict=True):
            generated = text.decode(row)
            edits, chars = character_errors(generated, ref)
            tally.edits, tally.chars = tally.edits + edits, tally.chars + chars
            captions[f"{source}_to_text"].append(
                Caption(key, str(meta.get("source", "")), ref, generated))


def _metrics(seen: int, losses: _Sums, recon: _Sums, stored: dict[str, list[Tensor]],
             metas: dict[str, list[dict[str, Any]]], tallies: dict[str, _TextTally],
             labels: Callable[[dict[str, Any]], object] | None) -> dict[str, Any]:
    metrics: dict[str, Any] = {
        "samples": seen, "tasks": {name: {"loss": value} for name, value in losses.means().items()},
        "retrieval": {}, "text": {}, "reconstruction": {}}
    if seen == 0:
        return metrics
    if labels is not None:
        metrics["retrieval_by_label"] = {}
    for name in RETRIEVAL_TASKS:  # among the windows holding both modalities
        if not stored[name]:
            continue
        distances = correlation_distance(torch.cat(stored[name]), torch.cat(stored[f"{name}.real"]))
        metrics["retrieval"][name] = retrieval_metrics(distances)
        if labels is not None:
            metrics["retrieval_by_label"][name] = retrieval_metrics(
                distances, [labels(meta) for meta in metas[name]])
    for source, tally in tallies.items():
        if tally.tokens:
            metrics["text"][f"{source}_to_text"] = {
                "token_accuracy": tally.hits / tally.tokens,
                "cer": tally.edits / max(tally.chars, 1), "tokens": tally.tokens}
    for name, value in recon.means().items():
        modality, metric = name.split(".")
        metrics["reconstruction"].setdefault(modality, {})[metric] = value
    return metrics


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
    windows in the same order on every call, so numbers from two checkpoints compare. Every
    shard, also under torchrun (where rank 0 alone evaluates): not the rank's share."""
    return build_shard_loader(shards, batch_size, tokenizer=text.encode,
                              max_text_len=max_text_len, seed=0, shuffle_shards=False,
                              shuffle_buffer=0, num_workers=0, epochs=1, split=split,
                              rank=0, world_size=1)


def check_shards_fit(shards: str, split: Split | None, model: OmniLatentModel) -> ShardSet:
    """The shards to evaluate on; refused when their sizes (frames, image, mel) differ from
    the model's, naming them."""
    resolved = resolve_shards(shards, split=split)
    if resolved.expected is not None:
        check_data_fits_model(resolved.expected, model.config)
    return resolved


def source_labeller(pattern: str) -> Callable[[dict[str, Any]], str]:
    """``labels`` for `evaluate` from ``--label-pattern``: the regex is searched in each
    window's source path and its first group (or the whole match) is the window's class. A
    pattern RE2 cannot read, or a window it does not match, is a UsageError. RE2, not `re`:
    the pattern runs on text from the shards, and RE2 takes time linear in the text whatever
    the pattern (README.md, "Evaluating")."""
    import re2

    options = re2.Options()
    options.log_errors = False  # the error is raised, not also logged to stderr
    try:
        regex = re2.compile(pattern, options)
    except re2.error as err:
        reason = err.args[0].decode() if isinstance(err.args[0], bytes) else err
        raise UsageError(f"--label-pattern {pattern!r} is not a regular expression RE2 reads: "
                         f"{reason}", hint="backreferences and lookaround are not supported"
                         ) from None

    def label(meta: dict[str, Any]) -> str:
        # RE2 reads UTF-8: an undecodable byte of a file name (a lone surrogate) becomes "?"
        source = str(meta.get("source", "")).encode("utf-8", "replace").decode("utf-8")
        match = regex.search(source)
        if match is None:
            raise UsageError(f"--label-pattern {pattern!r} does not match the source "
                             f"{source!r}", hint="the pattern is searched in each window's "
                             "source path; its first group (or the whole match) is the label")
        return match.group(1) if regex.groups else match.group(0)

    return label


def shard_evaluator(shards: str, text: TextCodec, max_text_len: int, batch_size: int,
                    max_samples: int | None, split: Split | None = EVAL,
                    on_samples: Callable[[dict[str, Tensor]], None] | None = None,
                    labels: Callable[[dict[str, Any]], object] | None = None,
                    ) -> Callable[[OmniLatentModel], dict[str, Any]]:
    """An evaluator for `Trainer`: the metrics of `evaluate` on ``shards`` (eval split), with
    retrieval also by class when ``labels`` is given. ``on_samples`` receives each
    evaluation's ``EvalReport.samples`` (tensors have no place in the JSON metrics the
    trainer logs)."""

    def run(model: OmniLatentModel) -> dict[str, Any]:
        loader = eval_loader(shards, text, max_text_len, batch_size, split)
        report = evaluate(model, loader, text, max_samples=max_samples, labels=labels)
        if on_samples is not None:
            on_samples(report.samples)
        return report.metrics

    return run
