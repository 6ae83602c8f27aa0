"""The sizes every sample of a shard set shares (schema version, fps, frame and image sizes,
sample rate, mel bins, frames and hop): the one place their names are listed.

Light (no numpy, PyAV or PIL), so that `shards.shardset` can compare a manifest's config with
what a run wants without loading the codecs; `pipeline.shards` reads a sample's own values into
the same form.
"""

from __future__ import annotations

from typing import Any

from pipeline.config import SCHEMA_VERSION, PrepareConfig


def sample_format(*, schema_version: int, fps: int, frames: int, frame_size: int,
                  image_size: int, sample_rate: int, n_mels: int, mel_frames: int,
                  hop_length: int) -> dict[str, Any]:
    """The per-sample values of a shard set under the names readers compare."""
    return {
        "schema_version": schema_version, "fps": fps, "frames": frames,
        "frame_size": frame_size, "image_size": image_size, "sample_rate": sample_rate,
        "n_mels": n_mels, "mel_frames": mel_frames, "hop_length": hop_length,
    }


def expected_from_config(config: PrepareConfig) -> dict[str, Any]:
    """The per-sample values every sample of a shard set prepared with `config` must have."""
    return sample_format(
        schema_version=SCHEMA_VERSION, fps=config.fps, frames=config.frames_per_clip,
        frame_size=config.frame_size, image_size=config.image_size,
        sample_rate=config.sample_rate, n_mels=config.n_mels, mel_frames=config.mel_frames,
        hop_length=config.hop_length,
    )
