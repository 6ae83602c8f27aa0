"""Shard schema v1 in one place: member names, the sample's JSON metadata, how members are
encoded, the only decoder that may read them back, and the checks a sample must pass.

One sample is one clip window of one video, stored in a tar shard as webdataset members that
share the key ``<video_id>_<clip index, 6 digits>``:

==============  ==========================================================================
``json``        `SampleMeta`: schema version, source, times, sizes, mel parameters, ...
``mel.npy``     float16 ``(n_mels, T_mel)`` log-mel (`pipeline.audio.log_mel`)
``frame.jpg``   ``(image_size, image_size, 3)`` RGB, the clip's middle frame (image modality)
``clip.<enc>``  ``(T, frame_size, frame_size, 3)`` uint8 frames: ``npy`` (raw) or ``mp4`` (H.264)
``txt``         UTF-8 transcript of the cues overlapping the window (may be empty)
==============  ==========================================================================

Safety: webdataset's default decoders unpickle ``.pyd``/``.pickle``/``.pth`` members, so a
shard from an untrusted source could run code. `decode_member` is the one decoder of this
project; it reads only the types above, loads ``.npy`` with ``allow_pickle=False``, restricts
PIL and FFmpeg to the one format the extension names, and refuses everything else unread.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from fractions import Fraction
from io import BytesIO
from typing import Any, get_args

import av
import numpy as np
from av.video.reformatter import VideoReformatter
from PIL import Image

from pipeline.config import SCHEMA_VERSION, PrepareConfig
from pipeline.errors import PipelineError
from pipeline.h264 import x264_options
from pipeline.members import (  # re-exported: the names are part of the schema
    CLIP_ENCODINGS,
    CLIP_MEMBERS,
    CLIP_PREFIX,
    DEFAULT_CLIP_ENCODING,
    MEMBER_IMAGE,
    MEMBER_JSON,
    MEMBER_MEL,
    MEMBER_TEXT,
    SCHEMA_MEMBERS,
)
from pipeline.sample_format import expected_from_config, sample_format
from pipeline.transcripts import TranscriptSource

# H.264 settings of the mp4 clip encoding. At CRF 18 the codec adds ~1 grey level of mean
# error to the ~2.4 that yuv420p colour subsampling costs by itself on natural content; each
# step of 2 in CRF changes the clip by ~16% and the error by ~0.3 levels (bench/
# clip_encoding.py --crf ...). "fast" compresses as well as "medium" at 112x112 in less time.
# One thread: prepare already runs one worker per core, and single-threaded x264 output does
# not depend on the machine.
MP4_CRF = 18
MP4_PRESET = "fast"
MP4_PIX_FMT = "yuv420p"

# Normalisation of the log-mel for the model: (log_mel - MEL_CENTER) / MEL_SCALE. With the
# LOG_FLOOR of pipeline.audio, digital silence (-13.8) maps to -1.96; speech-like sound
# peaking at -6 dBFS (log-mel 5th..95th percentile -8.4..1.7) to -0.9..1.1; white noise at
# -20 dBFS RMS (mean 0.2) to 0.85; a full-scale sine's peak bin (8.8) to 2.55, the maximum.
MEL_CENTER = -4.0
MEL_SCALE = 5.0

TRANSCRIPT_SOURCES: tuple[str, ...] = get_args(TranscriptSource)
ROTATIONS = (0, 90, 180, 270)

# The key is "<video_id>_<clip index>"; `pipeline.discover.video_id` never emits a dot or "/".
KEY_PATTERN = re.compile(r"[A-Za-z0-9_-]+_[0-9]{6,}")
# Bounds on what a reader holds of one member, so a hostile or broken shard cannot make a
# loader worker (or omni inspect) allocate gigabytes. Readers check a member's declared tar size
# against `member_cap` before reading it, decoders check declared picture sizes and counts before
# decoding, and no member may hold, or decode to, more than MAX_MEMBER_BYTES whatever a manifest
# or a json says (a default-sized raw clip is 0.6 MB).
MAX_MEMBER_BYTES = 64 * 2**20
# json and txt: a json is under 1 kB and prepare caps a window's text at 4096 bytes.
MAX_TEXT_BYTES = 64 * 2**10
# A media member of a shard set of known sizes may hold twice its raw pixel bytes plus this:
# H.264 and JPEG stay far below raw, an npy exceeds it by its header.
_CAP_SLACK = 64 * 2**10
# Tolerance when checking that a window's times agree with its frame and mel counts.
TIME_TOLERANCE = 1e-3

_NPY_MAGIC = b"\x93NUMPY"
_PIL_FORMATS = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG"}


class UnsafeMemberError(PipelineError):
    """A member whose type this schema does not read; it was left undeserialised."""


class CorruptMemberError(PipelineError):
    """A member of a known type whose bytes do not decode; its sample must be dropped."""


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
    def build(
        cls,
        config: PrepareConfig,
        *,
        source: str,
        video_id: str,
        clip_index: int,
        start: float,
        end: float,
        rotation: int,
        has_audio: bool,
        transcript_source: str,
        transcript_timed: bool,
        clip_encoding: str = DEFAULT_CLIP_ENCODING,
    ) -> SampleMeta:
        """The metadata of one window, with sizes and mel parameters taken from `config`."""
        mel = MelMeta(n_mels=config.n_mels, n_fft=config.n_fft, hop_length=config.hop_length,
                      f_min=float(config.f_min), f_max=float(config.mel_f_max),
                      frames=config.mel_frames)
        return cls(
            schema_version=SCHEMA_VERSION, key=sample_key(video_id, clip_index), source=source,
            video_id=video_id, clip_index=clip_index, start=float(start), end=float(end),
            fps=config.fps, frames=config.frames_per_clip, frame_size=config.frame_size,
            image_size=config.image_size, sample_rate=config.sample_rate, mel=mel,
            rotation=rotation, has_audio=has_audio, transcript_source=transcript_source,
            transcript_timed=transcript_timed, clip_encoding=clip_encoding,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SampleMeta:
        """Parse a ``json`` member; raises ValueError naming the first missing or mistyped field.

        Unknown fields are ignored, so a later schema may add fields that v1 readers skip.
        """
        mel = data.get("mel")
        if not isinstance(mel, Mapping):
            raise ValueError("json: field 'mel' is missing or not an object")
        values = {"mel": MelMeta(**_typed_fields(MelMeta, mel, "json.mel"))}
        values.update(_typed_fields(cls, data, "json", skip=("mel",)))
        return cls(**values)


def _typed_fields(cls: type, data: Mapping[str, Any], where: str,
                  skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The fields of dataclass `cls` from `data`, checked against their annotated type."""
    checks: dict[str, tuple[type, ...]] = {
        "int": (int,), "float": (int, float), "str": (str,), "bool": (bool,),
    }
    values: dict[str, Any] = {}
    for field in fields(cls):
        if field.name in skip:
            continue
        if field.name not in data:
            raise ValueError(f"{where}: field '{field.name}' is missing")
        value = data[field.name]
        allowed = checks[str(field.type)]
        # bool is an int in Python; a JSON true must not pass for a count.
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise ValueError(f"{where}: field '{field.name}' should be {field.type}, "
                             f"got {value!r}")
        values[field.name] = float(value) if field.type == "float" else value
    return values


def sample_key(video_id: str, clip_index: int) -> str:
    """The webdataset key of clip `clip_index` of a video: ``<video_id>_<index:06d>``.

    webdataset splits a member name at the first dot of its base name into key and member
    type, so a dot (or a "/") in the key would silently split one sample into broken ones.
    """
    if clip_index < 0:
        raise ValueError(f"clip_index must be >= 0, got {clip_index}")
    key = f"{video_id}_{clip_index:06d}"
    if not KEY_PATTERN.fullmatch(key):
        raise ValueError(f"video id {video_id!r} may only hold A-Z, a-z, 0-9, '_' and '-'; "
                         f"build it with pipeline.discover.video_id")
    return key


def clip_member(encoding: str) -> str:
    """The member name of the clip for `encoding` ("clip.npy" or "clip.mp4")."""
    if encoding not in CLIP_ENCODINGS:
        raise ValueError(f"clip encoding must be one of {', '.join(CLIP_ENCODINGS)}, "
                         f"got {encoding!r}")
    return CLIP_PREFIX + encoding


def expected_from_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    """Like `expected_from_config`, from a sample's ``json`` (when no manifest is at hand)."""
    return _meta_values(SampleMeta.from_dict(meta))


def _meta_values(meta: SampleMeta) -> dict[str, Any]:
    """The values of `meta` under the names `expected_from_config` uses."""
    return sample_format(
        schema_version=meta.schema_version, fps=meta.fps, frames=meta.frames,
        frame_size=meta.frame_size, image_size=meta.image_size, sample_rate=meta.sample_rate,
        n_mels=meta.mel.n_mels, mel_frames=meta.mel.frames, hop_length=meta.mel.hop_length,
    )


# --------------------------------------------------------------------------- encoding
def encode_clip(frames: np.ndarray, encoding: str, fps: int, *, crf: int = MP4_CRF,
                preset: str = MP4_PRESET) -> bytes:
    """The bytes of a clip member: `frames` (T, H, W, 3) uint8 as ``npy`` or ``mp4``.

    ``mp4`` is H.264 (libx264, `crf`, `preset`, yuv420p, one thread, the same bytes on every
    run: `pipeline.h264`) at `fps` with frame i at time i / fps, so decoding gives back
    exactly T frames. H and W must be even (yuv420p).
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"a clip must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    if encoding == "npy":
        buffer = BytesIO()
        np.save(buffer, np.ascontiguousarray(frames), allow_pickle=False)
        return buffer.getvalue()
    if encoding != "mp4":
        raise ValueError(f"clip encoding must be one of {', '.join(CLIP_ENCODINGS)}, "
                         f"got {encoding!r}")
    _, height, width, _ = frames.shape
    if height % 2 or width % 2:
        raise ValueError(f"mp4 clips need an even frame size (yuv420p), got {width}x{height}; "
                         f"use an even frame_size or the npy clip encoding")
    buffer = BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream(
            "libx264", rate=fps, options=dict(x264_options(crf, preset)),
        )
        stream.width, stream.height, stream.pix_fmt = width, height, MP4_PIX_FMT
        stream.time_base = Fraction(1, fps)
        for index, picture in enumerate(frames):  # picture: (H, W, 3)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(picture), format="rgb24")
            frame.pts = index
            frame.time_base = stream.time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def encode_sample(
    key: str,
    meta: SampleMeta,
    mel: np.ndarray,
    image: np.ndarray,
    frames: np.ndarray,
    text: str,
    config: PrepareConfig,
    clip_encoding: str | None = None,
) -> dict[str, str | bytes]:
    """One sample as webdataset members, ready for `webdataset.TarWriter.write`.

    `mel` is float16 (n_mels, T_mel), `image` uint8 (image_size, image_size, 3), `frames`
    uint8 (T, frame_size, frame_size, 3), all as `config` and `meta` say; `clip_encoding`
    defaults to `meta.clip_encoding` and must agree with it. Everything is checked with
    `validate_sample` before encoding, so a shard never receives a sample the loader would
    reject; a mismatch raises ValueError listing every problem.
    """
    encoding = meta.clip_encoding if clip_encoding is None else clip_encoding
    clip_name = clip_member(encoding)
    problems = validate_sample(
        {"__key__": key, MEMBER_JSON: meta.to_dict(), MEMBER_MEL: mel, MEMBER_IMAGE: image,
         clip_name: frames, MEMBER_TEXT: text},
        expected_from_config(config),
    )
    if problems:
        raise ValueError(f"refusing to write sample {key}: " + "; ".join(problems))
    mel_buffer = BytesIO()
    np.save(mel_buffer, mel, allow_pickle=False)
    image_buffer = BytesIO()
    Image.fromarray(image, mode="RGB").save(image_buffer, format="JPEG",
                                            quality=config.jpeg_quality)
    return {
        "__key__": key,
        MEMBER_JSON: json.dumps(meta.to_dict(), sort_keys=True).encode("utf-8"),
        MEMBER_MEL: mel_buffer.getvalue(),
        MEMBER_IMAGE: image_buffer.getvalue(),
        clip_name: encode_clip(frames, encoding, config.fps),
        MEMBER_TEXT: text.encode("utf-8"),
    }


# --------------------------------------------------------------------------- decoding
def member_type(name: str) -> str:
    """The type of a member, i.e. its last extension, lower case ("clip.mp4" -> "mp4")."""
    return name.rsplit(".", 1)[-1].lower()


def member_shape(name: str, expected: Mapping[str, Any]) -> tuple[int, ...] | None:
    """The array a media member of a shard set with sizes `expected` decodes to; None for
    json, txt and names outside the schema."""
    if name == MEMBER_MEL:
        return (expected["n_mels"], expected["mel_frames"])
    if name == MEMBER_IMAGE:
        return (expected["image_size"], expected["image_size"], 3)
    if name in CLIP_MEMBERS:
        return (expected["frames"], expected["frame_size"], expected["frame_size"], 3)
    return None


def member_cap(name: str, expected: Mapping[str, Any] | None) -> int:
    """The most bytes schema member `name` may declare in its tar header to be read at all.

    json and txt: MAX_TEXT_BYTES. A media member of a shard set of known sizes (`expected`):
    twice its raw bytes plus a little, at most MAX_MEMBER_BYTES; with unknown sizes (no
    manifest), MAX_MEMBER_BYTES. With known sizes, a loader's shuffle buffer full of hostile
    samples so holds at most about twice what it holds of genuine ones.
    """
    if name in (MEMBER_JSON, MEMBER_TEXT):
        return MAX_TEXT_BYTES
    shape = None if expected is None else member_shape(name, expected)
    if shape is None:
        return MAX_MEMBER_BYTES
    raw = math.prod(max(0, size) for size in shape) * (2 if name == MEMBER_MEL else 1)
    return min(MAX_MEMBER_BYTES, 2 * raw + _CAP_SLACK)


def oversized_member(name: str, size: int, expected: Mapping[str, Any] | None) -> str | None:
    """Why schema member `name`, declaring `size` bytes, must be skipped unread (its sample is
    lost), or None when it is within `member_cap`."""
    cap = member_cap(name, expected)
    if size <= cap:
        return None
    return (f"member {name!r} declares {size} bytes, more than the {cap} such a member may "
            f"hold; skipped unread")


def decode_member(name: str, data: bytes, expected: Mapping[str, Any] | None = None) -> Any:
    """Decode one member by its name; the only decoder shards are ever read with.

    ``json`` -> dict, ``txt`` -> str, ``npy`` -> ndarray (no pickles), ``jpg``/``jpeg``/``png``
    -> uint8 (H, W, 3) RGB, ``mp4`` -> uint8 (T, H, W, 3) from its H.264 stream. Any other type
    (notably ``pyd``, ``pickle``, ``pth``, ``pt``) raises UnsafeMemberError without reading
    the bytes; bytes that do not decode raise CorruptMemberError.

    Sizes are checked before pixels are decoded, so a small hostile member cannot expand into
    gigabytes: an image's or a clip stream's declared width and height (and a clip's declared
    frame count) must be those of `expected` (`expected_from_config`), frames past the expected
    count stop the decode, and nothing may decode to more than MAX_MEMBER_BYTES. Without
    `expected` only that last bound applies: readers of untrusted shards pass it
    (`decode_sample` does).
    """
    kind = member_type(name)
    decoder = _DECODERS.get(kind)
    if decoder is None:
        raise UnsafeMemberError(f"member {name!r}: type {kind!r} is not part of shard schema "
                                f"v1 and is never deserialised")
    shape = None if expected is None else member_shape(name, expected)
    try:
        return decoder(data, shape)
    except CorruptMemberError as err:
        raise CorruptMemberError(f"member {name!r}: {err}") from err
    except Exception as err:  # any library's complaint about the bytes means a broken member
        raise CorruptMemberError(f"member {name!r} does not decode as {kind}: "
                                 f"{type(err).__name__}: {err}") from err


def _decode_json(data: bytes, shape: tuple[int, ...] | None) -> dict[str, Any]:
    value = json.loads(data.decode("utf-8"))
    if not isinstance(value, dict):
        raise CorruptMemberError(f"expected a JSON object, got {type(value).__name__}")
    return value


def _decode_text(data: bytes, shape: tuple[int, ...] | None) -> str:
    return data.decode("utf-8")


def _decode_npy(data: bytes, shape: tuple[int, ...] | None) -> np.ndarray:
    # np.load would also open .npz archives (and with allow_pickle, pickles): accept .npy only.
    if not data.startswith(_NPY_MAGIC):
        raise CorruptMemberError("not an .npy array (bad magic bytes)")
    buffer = BytesIO(data)
    version = np.lib.format.read_magic(buffer)
    if version == (1, 0):
        declared, _, dtype = np.lib.format.read_array_header_1_0(buffer)
    elif version == (2, 0):
        declared, _, dtype = np.lib.format.read_array_header_2_0(buffer)
    else:
        raise CorruptMemberError(f".npy format version {version} is not read (1.0 and 2.0 are)")
    # np.load allocates what the header declares before it reads the data.
    size = math.prod(declared) * dtype.itemsize
    if size > MAX_MEMBER_BYTES:
        raise CorruptMemberError(f"declares a {dtype} array of shape {declared}, {size} bytes, "
                                 f"more than {MAX_MEMBER_BYTES}")
    buffer.seek(0)
    return np.load(buffer, allow_pickle=False)


def _decode_image(kind: str, data: bytes, shape: tuple[int, ...] | None) -> np.ndarray:
    with Image.open(BytesIO(data), formats=[_PIL_FORMATS[kind]]) as image:
        width, height = image.size  # from the header: nothing is decoded yet
        if shape is not None and (height, width) != shape[:2]:
            raise CorruptMemberError(f"image of {width}x{height}, the shard set's images are "
                                     f"{shape[1]}x{shape[0]}")
        if width * height * 3 > MAX_MEMBER_BYTES:
            raise CorruptMemberError(f"image of {width}x{height} is larger than "
                                     f"{MAX_MEMBER_BYTES} bytes decoded")
        return np.array(image.convert("RGB"))  # (H, W, 3), writable (asarray is read-only)


def _decode_mp4(data: bytes, shape: tuple[int, ...] | None) -> np.ndarray:
    # format="mp4" keeps FFmpeg from probing other demuxers (some, like HLS, open URLs).
    with av.open(BytesIO(data), "r", format="mp4") as container:
        if len(container.streams.video) != 1:
            raise CorruptMemberError(f"expected one video stream, found "
                                     f"{len(container.streams.video)}")
        stream = container.streams.video[0]
        if stream.codec_context.name != "h264":
            raise CorruptMemberError(f"expected H.264, found {stream.codec_context.name}")
        width, height = stream.width, stream.height
        if shape is not None and (height, width) != shape[1:3]:
            raise CorruptMemberError(f"frames of {width}x{height}, the shard set's clips are "
                                     f"{shape[2]}x{shape[1]}")
        limit = MAX_MEMBER_BYTES // max(1, width * height * 3)  # frames that fit the bound
        if shape is not None:
            limit = min(limit, shape[0])
        if limit < 1:
            raise CorruptMemberError(f"frames of {width}x{height} are larger than "
                                     f"{MAX_MEMBER_BYTES} bytes decoded")
        if stream.frames > limit:  # 0 when the container does not say
            raise CorruptMemberError(f"declares {stream.frames} frames, more than {limit}")
        # Frame threads cost more to start than 16 small frames take to decode.
        stream.thread_type = "NONE"
        stream.codec_context.thread_count = 1
        reformatter = VideoReformatter()  # one swscale context for the whole clip
        pictures = []
        for frame in container.decode(stream):
            if (frame.width, frame.height) != (width, height):  # the bitstream may disagree
                raise CorruptMemberError(f"a frame of {frame.width}x{frame.height} in a stream "
                                         f"of {width}x{height}")
            if len(pictures) == limit:
                raise CorruptMemberError(f"more than {limit} frames")
            pictures.append(reformatter.reformat(frame, format="rgb24").to_ndarray())
    if not pictures:
        raise CorruptMemberError("no decodable frames")
    return np.stack(pictures)  # (T, H, W, 3)


_DECODERS = {
    "json": _decode_json,
    "txt": _decode_text,
    "npy": _decode_npy,
    "jpg": functools.partial(_decode_image, "jpg"),
    "jpeg": functools.partial(_decode_image, "jpeg"),
    "png": functools.partial(_decode_image, "png"),
    "mp4": _decode_mp4,
}
_MEDIA_MEMBERS = frozenset(SCHEMA_MEMBERS) - {MEMBER_JSON, MEMBER_TEXT}


def decode_sample(raw: Mapping[str, Any], expected: Mapping[str, Any] | None = None
                  ) -> tuple[dict[str, Any], list[str]]:
    """Decode the schema's members of a raw webdataset sample; leave every other one unread.

    Returns the decoded sample (``__key__``, ``__url__`` and other ``__meta__`` entries kept
    as they are) and the names of the members that were dropped undecoded: unknown or unsafe
    types, including a ``clip.*`` of an encoding this schema does not define (a reader may
    pass those with the value None, never having read them). Raises CorruptMemberError for a
    schema member whose bytes do not decode.

    Media members are decoded to the sizes `expected` (the manifest's `expected_from_config`)
    or, without it, to those the sample's own json declares; a sample with media but no usable
    json raises CorruptMemberError, its media left undecoded (see `decode_member`).
    """
    sizes = expected
    if sizes is None and not _MEDIA_MEMBERS.isdisjoint(raw):
        sizes = _declared_sizes(raw)
    decoded: dict[str, Any] = {}
    dropped: list[str] = []
    for name, value in raw.items():
        if name.startswith("__"):
            decoded[name] = value
        elif name in SCHEMA_MEMBERS:
            decoded[name] = decode_member(name, value, sizes)
        else:
            dropped.append(name)
    return decoded, dropped


def _declared_sizes(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The sizes a sample's own json declares, to decode its media members against."""
    why = "its media members are not decoded without the sizes it declares"
    if MEMBER_JSON not in raw:
        raise CorruptMemberError(f"missing member {MEMBER_JSON!r}: {why}")
    meta = decode_member(MEMBER_JSON, raw[MEMBER_JSON])
    try:
        return expected_from_meta(meta)
    except (TypeError, ValueError) as err:
        raise CorruptMemberError(f"{err}; {why}") from err


# --------------------------------------------------------------------------- validation
def validate_sample(sample: Mapping[str, Any], expected: Mapping[str, Any] | None) -> list[str]:
    """Every problem of a decoded sample, as readable sentences; an empty list means valid.

    `sample` maps ``__key__`` and member names to decoded values (see `decode_sample`).
    Checked: the key (present, no dot, ``<video_id>_<6+ digits>``, equal to the metadata's),
    the members (each present, exactly one clip, nothing else), the metadata (fields and
    types, schema version, times consistent with the frame and mel counts, allowed values),
    the arrays (dtype and shape as the metadata says, finite mel) and, when `expected` is
    given (`expected_from_config` of the manifest's config), the metadata against it.
    """
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
    for name in sorted(members - {MEMBER_JSON, MEMBER_MEL, MEMBER_IMAGE, MEMBER_TEXT, *clips}):
        problems.append(f"unexpected member {name!r}")
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
        actual = _meta_values(meta)
        for name, value in expected.items():
            if actual.get(name) != value:
                problems.append(f"json {name} is {actual.get(name)!r}, the shard set's "
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
    if not (math.isfinite(meta.start) and math.isfinite(meta.end)
            and 0 <= meta.start < meta.end):
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
    shapes = [
        (MEMBER_MEL, np.float16, (meta.mel.n_mels, meta.mel.frames)),
        (MEMBER_IMAGE, np.uint8, (meta.image_size, meta.image_size, 3)),
    ]
    if len(clips) == 1:
        shapes.append((clips[0], np.uint8, (meta.frames, meta.frame_size, meta.frame_size, 3)))
    for name, dtype, shape in shapes:
        if name not in sample:
            continue
        value = sample[name]
        if not isinstance(value, np.ndarray):
            problems.append(f"{name} should be an array, got {type(value).__name__}")
        elif value.dtype != dtype or value.shape != shape:
            problems.append(f"{name} is {value.dtype} {tuple(value.shape)}, the json says "
                            f"{np.dtype(dtype)} {shape}")
        elif name == MEMBER_MEL and not np.isfinite(value).all():
            problems.append(f"{name} holds NaN or infinite values")
    return problems
