"""Files from model outputs, for `omni generate`: pictures, clips and sound.

The arrays come back to pipeline units first (`pipeline.normalize.unit_to_pixels`,
`model_to_mel`, then `pipeline.audio.mel_to_waveform` for sound); this module only writes
them. Every writer goes through a temporary name beside the target and renames it when the
file is complete, so a failed or interrupted write never leaves half a file under the name.
"""

from __future__ import annotations

import contextlib
import os
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.errors import MediaError
from pipeline.schema import encode_clip

IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
VIDEO_SUFFIXES = (".mp4", ".gif")
LOSSY_QUALITY = 95  # JPEG and WebP: a generated picture is looked at, not stored in bulk


@contextlib.contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    """A temporary name beside `path` for the block to write; renamed to `path` after it."""
    if not path.parent.is_dir():
        raise MediaError(f"cannot write {path}: the folder {path.parent} does not exist")
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        yield temporary
        os.replace(temporary, path)
    except OSError as err:
        raise MediaError(f"cannot write {path}: {err.strerror or err}; choose a writable "
                         f"path") from err
    finally:
        temporary.unlink(missing_ok=True)


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
    with _atomic(path) as temporary:
        Image.fromarray(image, mode="RGB").save(temporary, format=kind, **options)
    return path


def write_video(path: str | os.PathLike[str], frames: np.ndarray, fps: int) -> Path:
    """Write (T, H, W, 3) uint8 RGB frames at `fps` as `.mp4` or `.gif`.

    mp4: exactly as the shards store clips (`pipeline.schema.encode_clip`: H.264, CRF 18,
    yuv420p) with frame i at i / fps, so a decoder gets exactly T frames back; H and W must be
    even (yuv420p). gif: Pillow, as `omni inspect --export` writes clips; GIF
    times frames in hundredths of a second, so frame i lasts from i / fps to (i + 1) / fps
    rounded to those (8 fps: 120 and 130 ms in turn) and the clip plays T / fps seconds;
    Pillow merges identical consecutive frames (adding up their durations), so a still
    stretch plays as long but holds fewer frames.
    """
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
        with _atomic(path) as temporary:
            pictures[0].save(temporary, format="GIF", save_all=True,
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
    with _atomic(path) as temporary:
        temporary.write_bytes(data)
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
    with _atomic(path) as temporary, wave.open(str(temporary), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(sample_rate)
        handle.writeframes(pcm.tobytes())
    return path
