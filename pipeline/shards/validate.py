"""The checks a decoded shard sample must pass, as readable sentences: what the loader drops a
sample for, `omni inspect --verify` reports, and `encode_sample` refuses to write (the readers'
rules, checked on write too)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from pipeline.config import SCHEMA_VERSION
from pipeline.shards.decode import i420_shape
from pipeline.shards.schema import (
    CLIP_ENCODINGS,
    CLIP_MEMBERS,
    CLIP_PREFIX,
    KEY_PATTERN,
    MEMBER_IMAGE,
    MEMBER_JSON,
    MEMBER_MEL,
    MEMBER_TEXT,
    ROTATIONS,
    TRANSCRIPT_SOURCES,
    SampleMeta,
    meta_values,
)

# Tolerance when checking that a window's times agree with its frame and mel counts.
TIME_TOLERANCE = 1e-3


def validate_sample(sample: Mapping[str, Any], expected: Mapping[str, Any] | None) -> list[str]:
    """Every problem of a decoded sample (`decode_sample`'s), as readable sentences; an empty
    list means valid. With `expected` (`expected_from_config` of the manifest's config) the
    metadata is also checked against it."""
    problems: list[str] = []
    key = sample.get("__key__")
    if not isinstance(key, str) or not key:
        problems.append("the sample has no key")
    elif "." in key:
        problems.append(f"key {key!r} contains a dot (webdataset splits keys at the first dot)")
    elif not KEY_PATTERN.fullmatch(key):
        problems.append(f"key {key!r} is not <video_id>_<clip index, 6 digits>")

    members = {name for name in sample if not name.startswith("__")}
    for name in (MEMBER_JSON, MEMBER_MEL, MEMBER_IMAGE, MEMBER_TEXT):
        if name not in members:
            problems.append(f"missing member {name!r}")
    clips = sorted(name for name in members if name.startswith(CLIP_PREFIX))
    if not clips:
        problems.append(f"missing clip member (one of {', '.join(CLIP_MEMBERS)})")
    elif len(clips) > 1:
        problems.append(f"several clip members: {', '.join(clips)}")
    problems += [f"unexpected member {name!r}" for name
                 in sorted(members - {MEMBER_JSON, MEMBER_MEL, MEMBER_IMAGE, MEMBER_TEXT, *clips})]
    if clips and clips[0] not in CLIP_MEMBERS:
        problems.append(f"unknown clip encoding {clips[0]!r}")

    text = sample.get(MEMBER_TEXT)
    if MEMBER_TEXT in members and not isinstance(text, str):
        problems.append(f"txt should be a str, got {type(text).__name__}")

    raw_meta = sample.get(MEMBER_JSON)
    if MEMBER_JSON not in members:
        return problems
    if not isinstance(raw_meta, Mapping):
        problems.append(f"json should be an object, got {type(raw_meta).__name__}")
        return problems
    try:
        meta = SampleMeta.from_dict(raw_meta)
    except (TypeError, ValueError) as err:
        problems.append(str(err))
        return problems

    problems += _meta_problems(meta, key, clips, text)
    if expected is not None:
        actual = meta_values(meta)
        for name, value in expected.items():
            if actual.get(name) != value:
                problems.append(f"its {name} is {actual.get(name)!r}, the shard set's "
                                f"config says {value!r}")
    problems += _array_problems(sample, meta, clips)
    return problems


def _meta_problems(meta: SampleMeta, key: Any, clips: list[str], text: Any) -> list[str]:
    problems: list[str] = []
    if meta.schema_version != SCHEMA_VERSION:
        problems.append(f"schema_version is {meta.schema_version}, this code reads "
                        f"{SCHEMA_VERSION}; re-run omni prepare or use a matching version")
    if isinstance(key, str) and meta.key != key:
        problems.append(f"json key {meta.key!r} differs from the sample key {key!r}")
    if meta.key != f"{meta.video_id}_{meta.clip_index:06d}":
        problems.append(f"json key {meta.key!r} is not video_id + '_' + 6-digit clip_index")
    if meta.clip_encoding not in CLIP_ENCODINGS:
        problems.append(f"clip_encoding {meta.clip_encoding!r} is not one of "
                        f"{', '.join(CLIP_ENCODINGS)}")
    elif clips and clips[0] != CLIP_PREFIX + meta.clip_encoding:
        problems.append(f"clip member {clips[0]!r} but clip_encoding {meta.clip_encoding!r}")
    if meta.transcript_source not in TRANSCRIPT_SOURCES:
        problems.append(f"transcript_source {meta.transcript_source!r} is not one of "
                        f"{', '.join(TRANSCRIPT_SOURCES)}")
    elif meta.transcript_source == "none" and isinstance(text, str) and text:
        problems.append("txt is not empty although transcript_source is 'none'")
    if meta.rotation not in ROTATIONS:
        problems.append(f"rotation {meta.rotation} is not one of {ROTATIONS}")
    if meta.fps <= 0 or meta.sample_rate <= 0 or meta.mel.hop_length <= 0:
        problems.append("fps, sample_rate and mel.hop_length must be > 0")
        return problems
    if not (math.isfinite(meta.start) and math.isfinite(meta.end) and 0 <= meta.start < meta.end):
        problems.append(f"times must satisfy 0 <= start < end, got start={meta.start} "
                        f"end={meta.end}")
        return problems
    duration = meta.end - meta.start
    if abs(duration - meta.frames / meta.fps) > TIME_TOLERANCE:
        problems.append(f"end - start = {duration:g} s but frames / fps = "
                        f"{meta.frames / meta.fps:g} s")
    mel_frames = duration * meta.sample_rate / meta.mel.hop_length
    if abs(mel_frames - meta.mel.frames) > TIME_TOLERANCE * meta.sample_rate / meta.mel.hop_length:
        problems.append(f"end - start = {duration:g} s gives {mel_frames:g} mel frames, json "
                        f"mel.frames says {meta.mel.frames}")
    return problems


def _array_problems(sample: Mapping[str, Any], meta: SampleMeta, clips: list[str]) -> list[str]:
    problems: list[str] = []
    shapes = [(MEMBER_MEL, np.float16, (meta.mel.n_mels, meta.mel.frames)),
              (MEMBER_IMAGE, np.uint8, (meta.image_size, meta.image_size, 3))]
    if len(clips) == 1:
        clip = sample.get(clips[0])
        frames, size = meta.frames, meta.frame_size
        i420 = (clips[0] == CLIP_PREFIX + "mp4" and isinstance(clip, np.ndarray)
                and clip.ndim == 3)  # decoded into an I420 slot (`decode_member`)
        shapes.append((clips[0], np.uint8, i420_shape(frames, size, size) if i420
                       else (frames, size, size, 3)))
    for name, dtype, shape in shapes:
        if name not in sample:
            continue
        value = sample[name]
        if not isinstance(value, np.ndarray):
            problems.append(f"{name} should be an array, got {type(value).__name__}")
        elif value.dtype != dtype or value.shape != shape:
            problems.append(f"{name} is {value.dtype} {tuple(value.shape)}, the json says "
                            f"{np.dtype(dtype)} {shape}")
        elif name == MEMBER_MEL and not _all_finite(value):
            problems.append(f"{name} holds NaN or infinite values")
    return problems


def _all_finite(values: np.ndarray) -> bool:
    """Whether a float16 array holds no NaN or infinity (an exponent of all ones): by its
    bits, since `np.isfinite` converts float16 to float32 first (21 against 4 us a mel)."""
    return values.size == 0 or bool((values.view(np.uint16) & 0x7C00).max() < 0x7C00)
