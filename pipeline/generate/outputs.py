"""Files from model outputs, for `omni generate` and `omni eval`: text, pictures, clips, sound.

The arrays come back to pipeline units first (`pipeline.normalize.unit_to_pixels`,
`model_to_mel`, then `pipeline.media.audio.mel_to_waveform` for sound); this module only writes
them, each through `atomic_output`, so that a file is written whole or not at all (README.md,
"Outputs are written whole or not at all")."""

from __future__ import annotations

import contextlib
import os
import secrets
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from pipeline.errors import MediaError
from pipeline.shards.encode import encode_clip

IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
VIDEO_SUFFIXES = (".mp4", ".gif")
LOSSY_QUALITY = 95  # JPEG and WebP: a generated picture is looked at, not stored in bulk


def check_output_file(path: str | os.PathLike[str]) -> Path:
    """`path` as an output file, refused (MediaError) before any work when no file can be
    written there: its folder does not exist (it is not created: a typo in it should not
    make folders), or a folder has its name."""
    path = Path(path)
    if not path.parent.is_dir():
        raise MediaError(f"cannot write {path}: the folder {path.parent} does not exist")
    if path.is_dir() and not path.is_symlink():
        raise MediaError(f"cannot write {path}: it is a folder; name a file")
    return path


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A new file for the block to write, which then replaces `path` whole: created
    exclusively beside it under a name no other writer uses, flushed to disk and renamed over
    `path` (a symlink there is replaced, not written through); deleted if anything fails, so
    `path` keeps what it held. Raises MediaError."""
    path = check_output_file(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        try:
            descriptor = os.open(temporary,
                                 os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            with open(descriptor, "wb") as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
    except OSError as err:
        raise MediaError(f"cannot write {path}: {err.strerror or err}; choose a writable "
                         f"path") from err


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write `text` and a final newline as UTF-8."""
    path = Path(path)
    with atomic_output(path) as handle:
        handle.write((text + "\n").encode("utf-8"))
    return path


def _check_pixels(array: np.ndarray, ndim: int, shape: str) -> None:
    if array.ndim != ndim or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise MediaError(f"expected {shape} uint8 RGB, got {array.shape} {array.dtype}; "
                         f"convert model outputs with pipeline.normalize.unit_to_pixels")


def write_image(path: str | os.PathLike[str], image: np.ndarray) -> Path:
    """Write a (H, W, 3) uint8 RGB picture as PNG, JPEG or WebP (by the extension)."""
    path = Path(path)
    _check_pixels(image, 3, "(H, W, 3)")
    kind = IMAGE_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise MediaError(f"cannot write a picture as {path.name}: use one of "
                         f"{', '.join(IMAGE_FORMATS)}")
    options = {} if kind == "PNG" else {"quality": LOSSY_QUALITY}
    with atomic_output(path) as handle:
        Image.fromarray(image, mode="RGB").save(handle, format=kind, **options)
    return path


def write_video(path: str | os.PathLike[str], frames: np.ndarray, fps: int) -> Path:
    """Write (T, H, W, 3) uint8 RGB frames at `fps` as `.mp4` or `.gif`.

    mp4: exactly as the shards store clips (`pipeline.shards.encode.encode_clip`: H.264, CRF 18,
    yuv420p) with frame i at i / fps, so a decoder gets exactly T frames back; H and W must be
    even (yuv420p). gif: Pillow, as `omni inspect --export` writes clips; GIF
    times frames in hundredths of a second, so frame i lasts from i / fps to (i + 1) / fps
    rounded to those (8 fps: 120 and 130 ms in turn) and the clip plays T / fps seconds;
    Pillow merges identical consecutive frames (adding up their durations), so a still
    stretch plays as long but holds fewer frames."""
    path = Path(path)
    _check_pixels(frames, 4, "(T, H, W, 3)")
    if len(frames) == 0:
        raise MediaError(f"cannot write {path}: no frames")
    if fps <= 0:
        raise MediaError(f"cannot write {path}: fps must be > 0, got {fps}")
    suffix = path.suffix.lower()
    if suffix == ".gif":
        pictures = [Image.fromarray(picture, mode="RGB") for picture in frames]  # (H, W, 3)
        ends = [10 * round(100 * (index + 1) / fps) for index in range(len(frames))]  # ms
        durations = [end - start for start, end in zip([0, *ends], ends, strict=False)]
        with atomic_output(path) as handle:
            pictures[0].save(handle, format="GIF", save_all=True,
                             append_images=pictures[1:], duration=durations, loop=0)
        return path
    if suffix != ".mp4":
        raise MediaError(f"cannot write a clip as {path.name}: use one of "
                         f"{', '.join(VIDEO_SUFFIXES)}")
    _, height, width, _ = frames.shape
    if height % 2 or width % 2:
        raise MediaError(f"cannot write {path}: H.264 in yuv420p needs an even frame size, "
                         f"got {width}x{height}; write a .gif instead")
    data = encode_clip(frames, "mp4", fps)  # the shards' own H.264 encoding
    with atomic_output(path) as handle:
        handle.write(data)
    return path


def write_wav(path: str | os.PathLike[str], samples: np.ndarray, sample_rate: int) -> Path:
    """Write mono float samples (nominally in [-1, 1]; louder ones clip) as 16-bit PCM WAV."""
    path = Path(path)
    values = np.asarray(samples, dtype=np.float32)
    if values.ndim != 1:
        raise MediaError(f"expected mono samples (N,), got shape {values.shape}")
    if not np.isfinite(values).all():
        raise MediaError(f"cannot write {path}: the samples hold NaN or infinite values")
    pcm = np.round(np.clip(values, -1.0, 1.0) * 32767).astype("<i2")  # (N,)
    with atomic_output(path) as handle, wave.open(handle, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        wav.writeframes(pcm.tobytes())
    return path
