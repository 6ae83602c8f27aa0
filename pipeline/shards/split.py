"""The held-out evaluation split: which videos `omni prepare` keeps out of training.

The split is drawn **by video**, not by clip: the clip windows of one video overlap and share
speaker, scene and recording, so a clip-level split would evaluate on near-copies of training
samples. A video is in the eval split iff `unit_interval(seed, video_id) < eval_fraction`,
where `unit_interval` is a uniform number in [0, 1) read from SHA-256 of "seed/video id".

Why a hash threshold rather than ranking the videos (sort by hash, hold out the first F * N):
each video's split depends on its own id alone, never on which other videos exist. Adding
videos to a corpus never moves an existing video between the splits (so no later model trains
on what an earlier one was evaluated on), and every `--part I/N` run decides its units' videos
without seeing the rest of the corpus. The price is that the eval share is F only on average
(binomial): a corpus of 10 videos at F = 0.05 most likely has no eval video at all.
SHA-256 rather than Python's `hash()`, which is salted per process for strings."""

from __future__ import annotations

import hashlib
from typing import Any, Literal

Split = Literal["train", "eval"]
TRAIN: Split = "train"
EVAL: Split = "eval"
SPLITS: tuple[Split, ...] = (TRAIN, EVAL)


def unit_interval(seed: int, video_id: str) -> float:
    """A number in [0, 1), uniform over ids and stable across processes, machines and Python
    versions: the first 53 bits of SHA-256("seed/video id") over 2**53."""
    # surrogateescape: an id is ASCII today, but a hash must never fail on a stray byte
    digest = hashlib.sha256(f"{seed}/{video_id}".encode("utf-8", "surrogateescape")).digest()
    # 53 bits, a double's mantissa: 64 bits over 2**64 can round up to exactly 1.0
    return (int.from_bytes(digest[:8], "big") >> 11) / 2**53


def split_of(video_id: str, eval_fraction: float, seed: int) -> Split:
    """"eval" iff the video's `unit_interval` falls below `eval_fraction`, else "train"."""
    return EVAL if unit_interval(seed, video_id) < eval_fraction else TRAIN


def parse_split(value: Any) -> Split:
    """A split name read from a stats file or manifest; ValueError for anything else."""
    if value not in SPLITS:
        raise ValueError(f"unknown split {value!r} (expected one of {', '.join(SPLITS)})")
    return value
