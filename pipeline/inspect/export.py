"""Samples a person can read or open: the first samples as text (`list_samples`), or as files
(`export_samples`: frame PNG, clip GIF and contact sheet, mel PNG, transcript), decoded as the
loader decodes them."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.errors import PipelineError
from pipeline.inspect.reader import META_MEMBERS, RawSample, iter_all, parse_meta
from pipeline.inspect.target import Target
from pipeline.shards.decode import CorruptMemberError, decode_sample
from pipeline.shards.schema import (
    CLIP_PREFIX,
    MEMBER_IMAGE,
    MEMBER_JSON,
    MEMBER_MEL,
    MEMBER_TEXT,
    SampleMeta,
)

_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_-]")
# Viridis at 9 evenly spaced points: perceptually uniform and readable in grey, so a mel image
# needs no plotting library.
_VIRIDIS = np.array([
    (68, 1, 84), (71, 44, 122), (59, 81, 139), (44, 113, 142), (33, 144, 141),
    (39, 173, 129), (92, 200, 99), (170, 220, 50), (253, 231, 37)], dtype=np.float64)


@dataclass(frozen=True)
class SampleView:
    """One sample as text: where it comes from and what was said during it."""

    key: str
    shard: str
    source: str | None  # None when the json does not decode
    start: float | None
    end: float | None
    transcript_source: str | None
    has_audio: bool | None
    text: str | None


def list_samples(target: Target, count: int) -> list[SampleView]:
    """The first `count` samples in shard order, read from their json and txt only."""
    views: list[SampleView] = []
    for raw in islice(iter_all(target, META_MEMBERS.__contains__), max(count, 0)):
        meta, text = parse_meta(raw)
        views.append(SampleView(
            raw.key, raw.shard, meta and meta.source, meta and meta.start, meta and meta.end,
            meta and meta.transcript_source, meta and meta.has_audio, text))
    return views


@dataclass(frozen=True)
class ExportedSample:
    """The files written for one sample (member -> path), or why none could be."""

    key: str
    files: dict[str, str]
    error: str | None = None


def export_samples(target: Target, out_dir: str | os.PathLike[str],
                   count: int) -> list[ExportedSample]:
    """Write the first `count` samples as files to look at, named after their keys.

    Per sample: ``<key>.frame.png`` (the middle frame), ``<key>.clip.gif`` (every frame at the
    clip's fps), ``<key>.sheet.png`` (the frames in a grid), ``<key>.mel.png`` (see
    `mel_image`) and ``<key>.txt`` (the transcript). A sample that does not decode is listed
    with its error and nothing written for it."""
    folder = Path(out_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PipelineError(f"cannot create the export folder {folder}: "
                            f"{err.strerror or err}; choose a writable folder") from err
    used: set[str] = set()
    sample_format = target.sample_format
    return [_export(raw, folder, _file_stem(raw.key, used), sample_format)
            for raw in islice(iter_all(target, lambda name: True, sample_format), max(count, 0))]


def _export(raw: RawSample, folder: Path, stem: str,
            sample_format: dict[str, Any] | None) -> ExportedSample:
    """One sample's files, decoded as the loader decodes it (sizes checked first)."""
    if raw.too_large:
        return ExportedSample(raw.key, {}, "; ".join(raw.too_large))
    try:
        sample, _ = decode_sample(raw.for_decoding(), sample_format)
        meta = SampleMeta.from_dict(sample[MEMBER_JSON])
        clip = next(value for name, value in sample.items() if name.startswith(CLIP_PREFIX))
        files = _write_files(folder, stem, meta, sample[MEMBER_IMAGE], clip,
                             sample[MEMBER_MEL], sample[MEMBER_TEXT])
    except (CorruptMemberError, KeyError, ValueError, TypeError, StopIteration) as err:
        return ExportedSample(raw.key, {}, f"{type(err).__name__}: {err}")
    return ExportedSample(raw.key, files)


def _file_stem(key: str, used: set[str]) -> str:
    """A file name from a sample key: only [A-Za-z0-9_-], unique within one export."""
    stem = base = _UNSAFE_NAME.sub("_", key) or "sample"
    number = 1
    while stem in used:
        number += 1
        stem = f"{base}-{number}"
    used.add(stem)
    return stem


def _write_files(folder: Path, stem: str, meta: SampleMeta, image: np.ndarray,
                 clip: np.ndarray, mel: np.ndarray, text: str) -> dict[str, str]:
    paths = {name: folder / f"{stem}.{name}" for name in
             ("frame.png", "clip.gif", "sheet.png", "mel.png", "txt")}
    try:
        Image.fromarray(image).save(paths["frame.png"])
        pictures = [Image.fromarray(picture) for picture in clip]  # (H, W, 3) each
        pictures[0].save(paths["clip.gif"], save_all=True, append_images=pictures[1:],
                         duration=round(1000 / meta.fps), loop=0)
        Image.fromarray(contact_sheet(clip)).save(paths["sheet.png"])
        Image.fromarray(mel_image(mel)).save(paths["mel.png"])
        paths["txt"].write_text(text, encoding="utf-8")
    except OSError as err:
        raise PipelineError(f"cannot write to the export folder {folder}: "
                            f"{err.strerror or err}; choose a writable folder") from err
    return {name: str(path) for name, path in paths.items()}


def contact_sheet(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) frames in a near-square grid, row by row: (rows * H, cols * W, 3).

    Cells after the last frame stay black (16 frames make a 4 x 4 sheet)."""
    count, height, width, channels = frames.shape
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    sheet = np.zeros((rows * height, columns * width, channels), dtype=frames.dtype)
    for index, picture in enumerate(frames):
        row, column = divmod(index, columns)
        sheet[row * height:(row + 1) * height, column * width:(column + 1) * width] = picture
    return sheet


def mel_image(mel: np.ndarray) -> np.ndarray:
    """A (M, T) log-mel as a (M, T, 3) uint8 picture: time to the right, low frequencies at the
    bottom, viridis colours.

    Normalised per image (its minimum dark, its maximum bright), as spectrogram viewers do, so
    quiet speech shows its structure; a constant mel (a silent track) comes out uniformly dark."""
    values = np.flipud(mel.astype(np.float64))  # (M, T), row 0 is now the highest band
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    return colormap(scaled)


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] of any shape to viridis RGB: shape + (3,), uint8."""
    stops = np.linspace(0.0, 1.0, len(_VIRIDIS))
    clipped = np.clip(values, 0.0, 1.0)
    channels = [np.interp(clipped, stops, _VIRIDIS[:, channel]) for channel in range(3)]
    return np.rint(np.stack(channels, axis=-1)).astype(np.uint8)
