"""Picture geometry shared by both decode backends.

A backend only has to deliver each picked frame as RGB at `scaled_size` of its *coded*
(unrotated) size; everything after that (display rotation, centre crop, the shrink to the clip
size) happens here, once, so the PyAV and FFmpeg backends cannot drift apart. The scaling itself
is libswscale's bilinear filter in both backends (`SWS_INTERPOLATION`), which widens its kernel
when it shrinks, so downscaling an HD frame to 224 does not alias."""

from __future__ import annotations

import numpy as np
from PIL import Image

# libswscale filter both backends ask for: PyAV's `interpolation` name and ffmpeg's `flags=`.
SWS_INTERPOLATION = "bilinear"
# The most bytes one decoded frame or picture may take in its own pixel format: 8K (7680x4320)
# fits at up to 48 bits per pixel (16-bit RGB, 199 MB), 16000x16000 does not in any format (256
# MB at 8 bits). Decoders keep several frames and convert them, so a file's memory is a few
# times this: the cap keeps one file from taking gigabytes, whatever its size on disk (a 2 kB
# stream may state 16000x16000). Checked from the size and pixel format the container states,
# before any frame is decoded (`pipeline.media.probe.check_frame_size`, `pipeline.generate.inputs`).
MAX_FRAME_BYTES = 200_000_000


def frame_size_problem(width: int, height: int, bits_per_pixel: int, what: str) -> str | None:
    """Why a `width` x `height` `what` at `bits_per_pixel` may not be decoded (it would take
    more than MAX_FRAME_BYTES), or None when it may."""
    size = width * height * bits_per_pixel // 8
    if size <= MAX_FRAME_BYTES:
        return None
    return (f"a {width}x{height} {what} takes {size / 1e6:.0f} MB decoded, more than the "
            f"{MAX_FRAME_BYTES / 1e6:.0f} MB a frame may take (8K at up to 48 bits per pixel "
            f"fits); not decoded")


def scaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) that gives the shorter side `short_side` pixels, keeping the aspect ratio.

    The long side is rounded half up, as ffmpeg's `av_rescale` does, and never drops below
    `short_side`, so the centre crop always fits."""
    if width <= 0 or height <= 0:
        raise ValueError(f"frame size must be positive, got {width}x{height}")
    short, long = min(width, height), max(width, height)
    scaled_long = max(short_side, (2 * long * short_side + short) // (2 * short))
    return (scaled_long, short_side) if width >= height else (short_side, scaled_long)


def rotate(picture: np.ndarray, rotation: int) -> np.ndarray:
    """Turn a (H, W, C) picture clockwise by `rotation` degrees (a multiple of 90)."""
    if rotation % 90:
        raise ValueError(f"rotation must be a multiple of 90 degrees, got {rotation}")
    return np.rot90(picture, k=-(rotation // 90) % 4)  # (H, W, C) or (W, H, C)


def center_crop(picture: np.ndarray, size: int) -> np.ndarray:
    """The central `size` x `size` square of a (H, W, C) picture at least that large."""
    height, width = picture.shape[:2]
    if height < size or width < size:
        raise ValueError(f"cannot crop {size}x{size} from a {width}x{height} picture")
    top, left = (height - size) // 2, (width - size) // 2
    return picture[top : top + size, left : left + size]  # (size, size, C)


def display_image(scaled: np.ndarray, rotation: int, image_size: int, *,
                  flip: bool = False) -> np.ndarray:
    """The clip's square image from a frame scaled to `scaled_size` of its coded size.

    `scaled` is (h, w, 3) uint8 in coded orientation; `rotation` is the clockwise display
    rotation and `flip` a left-right mirror applied after it (a display matrix that mirrors,
    e.g. a front camera's). Returns a contiguous (image_size, image_size, 3) uint8 array that
    owns its memory, so it never pins a decoder's or a pipe's buffer."""
    upright = rotate(scaled, rotation)  # (H, W, 3) as displayed
    if flip:
        upright = upright[:, ::-1]  # (H, W, 3) mirrored
    return np.ascontiguousarray(center_crop(upright, image_size))  # (S, S, 3)


def clip_frame(image: np.ndarray, frame_size: int) -> np.ndarray:
    """Shrink a square (S, S, 3) image to (frame_size, frame_size, 3) for the video modality.

    PIL's bilinear resize averages over the whole footprint when it shrinks (unlike a GPU
    bilinear sample), so a 2x reduction is a proper low-pass and not every other pixel."""
    if image.shape[0] == frame_size and image.shape[1] == frame_size:
        return image
    small = Image.fromarray(image).resize((frame_size, frame_size), Image.Resampling.BILINEAR)
    return np.asarray(small)  # (F, F, 3)
