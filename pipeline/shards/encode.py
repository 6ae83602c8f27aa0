"""How a sample becomes webdataset members: metadata, mel, frame, clip (npy or H.264) and
text bytes, every sample checked by `validate_sample` first so a shard never receives one the
loader would reject."""

from __future__ import annotations

import json
from fractions import Fraction
from io import BytesIO

import av
import numpy as np
from PIL import Image

from pipeline.config import PrepareConfig
from pipeline.media.h264 import x264_options
from pipeline.shards.schema import (
    MEMBER_IMAGE,
    MEMBER_JSON,
    MEMBER_MEL,
    MEMBER_TEXT,
    SampleMeta,
    clip_member,
    expected_from_config,
)
from pipeline.shards.validate import validate_sample

# H.264 settings of the mp4 clip encoding. At CRF 18 the codec adds ~1 grey level of mean
# error to the ~2.4 that yuv420p colour subsampling costs by itself on natural content; each
# step of 2 in CRF changes the clip by ~16% and the error by ~0.3 levels (bench/
# clip_encoding.py --crf ...). "fast" compresses as well as "medium" at 112x112 in less time.
# One thread: prepare already runs one worker per core, and single-threaded x264 output does
# not depend on the machine.
MP4_CRF = 18
MP4_PRESET = "fast"
MP4_PIX_FMT = "yuv420p"


def encode_clip(frames: np.ndarray, encoding: str, fps: int, *, crf: int = MP4_CRF,
                preset: str = MP4_PRESET) -> bytes:
    """The bytes of a clip member: `frames` (T, H, W, 3) uint8 as ``npy`` or ``mp4``.

    ``mp4`` is H.264 (libx264, `crf`, `preset`, yuv420p, one thread, the same bytes on every
    run: `pipeline.media.h264`) at `fps` with frame i at time i / fps, so decoding gives back
    exactly T frames. H and W must be even (yuv420p)."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"a clip must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    clip_member(encoding)  # refuses an encoding the schema does not define
    if encoding == "npy":
        buffer = BytesIO()
        np.save(buffer, np.ascontiguousarray(frames), allow_pickle=False)
        return buffer.getvalue()
    _, height, width, _ = frames.shape
    if height % 2 or width % 2:
        raise ValueError(f"mp4 clips need an even frame size (yuv420p), got {width}x{height}; "
                         f"use an even frame_size or the npy clip encoding")
    buffer = BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps, options=dict(x264_options(crf, preset)))
        stream.width, stream.height, stream.pix_fmt = width, height, MP4_PIX_FMT
        # Frames keep their own 1/fps: the muxer re-times the stream when it writes the header
        # (first packet out), and frames stamped with that would reach x264 out of order.
        stream.time_base = time_base = Fraction(1, fps)
        for index, picture in enumerate(frames):  # picture: (H, W, 3)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(picture), format="rgb24")
            frame.pts, frame.time_base = index, time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def encode_sample(key: str, meta: SampleMeta, mel: np.ndarray, image: np.ndarray,
                  frames: np.ndarray, text: str, config: PrepareConfig,
                  clip_encoding: str | None = None) -> dict[str, str | bytes]:
    """One sample as webdataset members, ready for `webdataset.TarWriter.write`.

    `mel` is float16 (n_mels, T_mel), `image` uint8 (image_size, image_size, 3), `frames`
    uint8 (T, frame_size, frame_size, 3), all as `config` and `meta` say; `clip_encoding`
    defaults to `meta.clip_encoding` and must agree with it. Everything is checked with
    `validate_sample` before encoding, so a shard never receives a sample the loader would
    reject; a mismatch raises ValueError listing every problem."""
    encoding = meta.clip_encoding if clip_encoding is None else clip_encoding
    clip_name = clip_member(encoding)
    problems = validate_sample(
        {"__key__": key, MEMBER_JSON: meta.to_dict(), MEMBER_MEL: mel, MEMBER_IMAGE: image,
         clip_name: frames, MEMBER_TEXT: text},
        expected_from_config(config))
    if problems:
        raise ValueError(f"refusing to write sample {key}: " + "; ".join(problems))
    mel_buffer = BytesIO()
    np.save(mel_buffer, mel, allow_pickle=False)
    image_buffer = BytesIO()
    Image.fromarray(image, mode="RGB").save(image_buffer, format="JPEG",
                                            quality=config.jpeg_quality)
    return {"__key__": key,
            MEMBER_JSON: json.dumps(meta.to_dict(), sort_keys=True).encode("utf-8"),
            MEMBER_MEL: mel_buffer.getvalue(), MEMBER_IMAGE: image_buffer.getvalue(),
            clip_name: encode_clip(frames, encoding, config.fps),
            MEMBER_TEXT: text.encode("utf-8")}
