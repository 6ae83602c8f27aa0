"""Geometry shared by both decode backends: scale, rotate, crop, shrink."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.media.frames import center_crop, clip_frame, display_image, rotate, scaled_size


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((1920, 1080), (398, 224)),  # 398.2 -> 398
        ((1080, 1920), (224, 398)),
        ((160, 120), (299, 224)),  # 298.67 -> 299
        ((224, 224), (224, 224)),
        ((100, 50), (448, 224)),  # upscale
        ((641, 640), (224, 224)),  # 224.35 -> 224, never below the short side
    ],
)
def test_scaled_size_sets_short_side(size: tuple[int, int], expected: tuple[int, int]) -> None:
    assert scaled_size(*size, 224) == expected


def test_scaled_size_rejects_empty_frames() -> None:
    with pytest.raises(ValueError, match="positive"):
        scaled_size(0, 10, 224)


def test_rotate_is_clockwise() -> None:
    picture = np.zeros((2, 3, 1), dtype=np.uint8)  # (H, W, C)
    picture[0, :, 0] = 1  # top row marked
    turned = rotate(picture, 90)
    assert turned.shape == (3, 2, 1)
    assert (turned[:, -1, 0] == 1).all()  # the top became the right edge
    assert (rotate(picture, 180)[-1, :, 0] == 1).all()
    assert (rotate(picture, 270)[:, 0, 0] == 1).all()
    assert rotate(picture, 360).shape == picture.shape
    with pytest.raises(ValueError, match="multiple of 90"):
        rotate(picture, 45)


def test_center_crop_takes_the_middle() -> None:
    picture = np.arange(5 * 8, dtype=np.uint8).reshape(5, 8, 1)  # (H, W, C)
    crop = center_crop(picture, 3)
    assert crop.shape == (3, 3, 1)
    assert crop[0, 0, 0] == picture[1, 2, 0]  # offsets (5-3)//2 and (8-3)//2
    with pytest.raises(ValueError, match="cannot crop"):
        center_crop(picture, 6)


def test_display_image_rotates_then_crops_and_owns_its_memory() -> None:
    scaled = np.zeros((224, 299, 3), dtype=np.uint8)  # landscape coded frame
    scaled[:10] = 255  # stripe on top
    image = display_image(scaled, 90, 224)
    assert image.shape == (224, 224, 3)
    assert image.flags.c_contiguous and image.base is None
    assert image[:, -10:].mean() == 255  # stripe now on the right
    assert image[:, :-10].max() == 0


def test_display_image_mirrors_after_rotating() -> None:
    scaled = np.zeros((224, 224, 3), dtype=np.uint8)  # square: the crop cuts nothing
    scaled[:10, :, 0] = 255  # red stripe on top
    scaled[:, :10, 1] = 255  # green stripe on the left
    image = display_image(scaled, 90, 224, flip=True)
    # Turned clockwise: top -> right, left -> top; then mirrored: right -> left.
    assert image[:, :10, 0].min() == 255 and image[:, 10:, 0].max() == 0
    assert image[:10, :, 1].min() == 255 and image[10:, :, 1].max() == 0
    assert image.flags.c_contiguous and image.base is None


def test_clip_frame_shrinks_with_area_averaging() -> None:
    checker = np.indices((224, 224)).sum(axis=0) % 2 * 255  # (224, 224) finest detail
    image = np.repeat(checker[..., None], 3, axis=2).astype(np.uint8)  # (224, 224, 3)
    small = clip_frame(image, 112)
    assert small.shape == (112, 112, 3) and small.dtype == np.uint8
    # A point sampler would return pure black or white; an averaging filter gives grey.
    assert abs(float(small.mean()) - 127.5) < 2 and small.std() < 20
    assert clip_frame(image, 224) is image
