"""Shard schema v1: member names, the sizes every sample of a shard set shares, the sample's
JSON metadata (`SampleMeta`) and its key. Written by `pipeline.shards.encode`, read back and
checked only by `pipeline.shards.decode`.

Light (no numpy, PyAV or PIL): the parent of `omni prepare` needs only these names and sizes
(to validate `--clip-encoding`, to count clips with text), and `shardset` compares a manifest's
config with what a run wants, without loading the codecs (~0.5 s of start-up;
tests/test_torch_free.py and tests/test_pipeline_structure.py check it).

One sample is one clip window of one video, stored in a tar shard as webdataset members that
share the key ``<video_id>_<clip index, 6 digits>``:

==============  ==========================================================================
``json``        `SampleMeta`: schema version, source, times, sizes, mel parameters, ...
``mel.npy``     float16 ``(n_mels, T_mel)`` log-mel (`pipeline.media.audio.log_mel`)
``frame.jpg``   ``(image_size, image_size, 3)`` RGB, the clip's middle frame (image modality)
``clip.<enc>``  ``(T, frame_size, frame_size, 3)`` uint8 frames: ``npy`` (raw) or ``mp4`` (H.264)
``txt``         UTF-8 transcript of the cues overlapping the window (may be empty)
==============  =========================================================================="""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, get_args

from pipeline.config import SCHEMA_VERSION, PrepareConfig
from pipeline.media.transcripts import TranscriptSource

MEMBER_JSON = "json"
MEMBER_MEL = "mel.npy"
MEMBER_IMAGE = "frame.jpg"
MEMBER_TEXT = "txt"
CLIP_PREFIX = "clip."
CLIP_ENCODINGS = ("npy", "mp4")
# Chosen by bench/clip_encoding.py on natural-like content: mp4 makes the clip 19x and the
# whole sample 5.7x smaller (122 kB vs 693 kB) for ~7 ms more decode per clip, i.e. ~2.7x the
# loader CPU per sample. Disk, network and shuffle-buffer memory are the scarcer resources at
# corpus scale, and loader CPU scales with workers.
DEFAULT_CLIP_ENCODING = "mp4"
CLIP_MEMBERS = tuple(CLIP_PREFIX + encoding for encoding in CLIP_ENCODINGS)
SCHEMA_MEMBERS = (MEMBER_JSON, MEMBER_MEL, MEMBER_IMAGE, MEMBER_TEXT, *CLIP_MEMBERS)


# The per-sample values readers compare, each size by its one name (the model's,
# `pipeline.modalities.SIZE_FIELDS`; also PrepareConfig's), whatever the sample json calls it.
SAMPLE_FORMAT = ("schema_version", "fps", "video_frames", "video_size", "image_size",
                 "sample_rate", "n_mels", "audio_frames", "hop_length")


def expected_from_config(config: PrepareConfig) -> dict[str, Any]:
    """The `SAMPLE_FORMAT` values every sample of a shard set prepared with `config` has."""
    return {"schema_version": SCHEMA_VERSION,
            **{name: getattr(config, name) for name in SAMPLE_FORMAT[1:]}}


# Normalisation of the log-mel for the model: (log_mel - MEL_CENTER) / MEL_SCALE. With the
# LOG_FLOOR of pipeline.media.audio, digital silence (-13.8) maps to -1.96; speech-like sound
# peaking at -6 dBFS (log-mel 5th..95th percentile -8.4..1.7) to -0.9..1.1; white noise at
# -20 dBFS RMS (mean 0.2) to 0.85; a full-scale sine's peak bin (8.8) to 2.55, the maximum.
MEL_CENTER = -4.0
MEL_SCALE = 5.0

TRANSCRIPT_SOURCES: tuple[str, ...] = get_args(TranscriptSource)
ROTATIONS = (0, 90, 180, 270)

# The key is "<video_id>_<clip index>"; `pipeline.media.discover.video_id` never emits a dot or "/".
KEY_PATTERN = re.compile(r"[A-Za-z0-9_-]+_[0-9]{6,}")


@dataclass(frozen=True)
class MelMeta:
    """The log-mel parameters, so a reader can tell what `mel.npy` holds without a config."""

    n_mels: int
    n_fft: int
    hop_length: int
    f_min: float
    f_max: float  # resolved: Nyquist when the config leaves it unset
    frames: int


@dataclass(frozen=True)
class SampleMeta:
    """The ``json`` member of a sample: everything needed to interpret and trace it."""

    schema_version: int
    key: str
    source: str  # the video's path relative to the input folder (POSIX)
    video_id: str
    clip_index: int
    start: float  # seconds from the video's origin
    end: float
    fps: int
    frames: int  # T, frames in `clip.*`
    frame_size: int
    image_size: int
    sample_rate: int
    mel: MelMeta
    rotation: int  # clockwise degrees the decoder applied for display
    has_audio: bool  # False: `mel.npy` is `silent_log_mel`
    transcript_source: str  # one of TRANSCRIPT_SOURCES
    transcript_timed: bool  # False: the text was spread over the video by word position
    clip_encoding: str  # one of CLIP_ENCODINGS

    @classmethod
    def build(cls, config: PrepareConfig, *, source: str, video_id: str, clip_index: int,
              start: float, end: float, rotation: int, has_audio: bool, transcript_source: str,
              transcript_timed: bool, clip_encoding: str = DEFAULT_CLIP_ENCODING) -> SampleMeta:
        """The metadata of one window, with sizes and mel parameters taken from `config`."""
        mel = MelMeta(n_mels=config.n_mels, n_fft=config.n_fft, hop_length=config.hop_length,
                      f_min=float(config.f_min), f_max=float(config.mel_f_max),
                      frames=config.audio_frames)
        return cls(
            schema_version=SCHEMA_VERSION, key=sample_key(video_id, clip_index), source=source,
            video_id=video_id, clip_index=clip_index, start=float(start), end=float(end),
            fps=config.fps, frames=config.video_frames, frame_size=config.video_size,
            image_size=config.image_size, sample_rate=config.sample_rate, mel=mel,
            rotation=rotation, has_audio=has_audio, transcript_source=transcript_source,
            transcript_timed=transcript_timed, clip_encoding=clip_encoding)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SampleMeta:
        """Parse a ``json`` member; raises ValueError naming the first missing or mistyped field.

        Unknown fields are ignored, so a later schema may add fields that v1 readers skip."""
        mel = data.get("mel")
        if not isinstance(mel, Mapping):
            raise ValueError("json: field 'mel' is missing or not an object")
        values = {"mel": MelMeta(**_typed_fields(MelMeta, mel, "json.mel"))}
        values.update(_typed_fields(cls, data, "json", skip=("mel",)))
        return cls(**values)


def _typed_fields(cls: type, data: Mapping[str, Any], where: str,
                  skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The fields of dataclass `cls` from `data`, checked against their annotated type."""
    values: dict[str, Any] = {}
    for name, kind, allowed in _field_types(cls):
        if name in skip:
            continue
        if name not in data:
            raise ValueError(f"{where}: field '{name}' is missing")
        value = data[name]
        # bool is an int in Python; a JSON true must not pass for a count.
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise ValueError(f"{where}: field '{name}' should be {kind}, got {value!r}")
        values[name] = float(value) if kind == "float" else value
    return values


@functools.cache
def _field_types(cls: type) -> tuple[tuple[str, str, tuple[type, ...]], ...]:
    """(name, annotated type, the Python types it accepts; none for a nested dataclass, which
    its caller skips) of each field of dataclass `cls`, worked out once: the loader parses
    every sample's json with them."""
    checks: dict[str, tuple[type, ...]] = {
        "int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}
    return tuple((field.name, str(field.type), checks.get(str(field.type), ()))
                 for field in fields(cls))


def sample_key(video_id: str, clip_index: int) -> str:
    """The webdataset key of clip `clip_index` of a video: ``<video_id>_<index:06d>``.

    webdataset splits a member name at the first dot of its base name into key and member
    type, so a dot (or a "/") in the key would silently split one sample into broken ones."""
    if clip_index < 0:
        raise ValueError(f"clip_index must be >= 0, got {clip_index}")
    key = f"{video_id}_{clip_index:06d}"
    if not KEY_PATTERN.fullmatch(key):
        raise ValueError(f"video id {video_id!r} may only hold A-Z, a-z, 0-9, '_' and '-'; "
                         f"build it with pipeline.media.discover.video_id")
    return key


def clip_member(encoding: str) -> str:
    """The member name of the clip for `encoding` ("clip.npy" or "clip.mp4")."""
    if encoding not in CLIP_ENCODINGS:
        raise ValueError(f"clip encoding must be one of {', '.join(CLIP_ENCODINGS)}, "
                         f"got {encoding!r}")
    return CLIP_PREFIX + encoding


def expected_from_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    """Like `expected_from_config`, from a sample's ``json`` (when no manifest is at hand)."""
    return meta_values(SampleMeta.from_dict(meta))


def meta_values(meta: SampleMeta) -> dict[str, Any]:
    """The `SAMPLE_FORMAT` values of `meta`."""
    values = (meta.schema_version, meta.fps, meta.frames, meta.frame_size, meta.image_size,
              meta.sample_rate, meta.mel.n_mels, meta.mel.frames, meta.mel.hop_length)
    return dict(zip(SAMPLE_FORMAT, values, strict=True))
