"""Configuration of `omni prepare`.

`PrepareConfig` holds every setting that changes the bytes written to the shards, or which
shard a sample lands in (the eval split: `eval_fraction`, `split_seed`). It is stored
in each unit's stats file and in the manifest, and a rerun into the same output directory with a
different `PrepareConfig` is refused unless `--overwrite`. Settings that only change *how* the
work runs (workers, `--part`, `--strict`) live in `RunOptions` and never invalidate earlier work."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from pipeline.errors import ConfigError

SCHEMA_VERSION = 1
DECODERS = ("pyav", "ffmpeg")
# Fields named on disk as the shard schema names them (files stay as they were) and in code as
# the model does.
_ON_DISK = {"video_size": "frame_size"}
_IN_CODE = {disk: name for name, disk in _ON_DISK.items()}


def _is_multiple(value: float, step: float) -> bool:
    ratio = value / step
    return math.isclose(ratio, round(ratio), abs_tol=1e-6)


@dataclass(frozen=True)
class PrepareConfig:
    """What one sample looks like. Defaults follow shard schema v1 (see README)."""

    clip_duration: float = 2.0
    clip_stride: float = 1.0
    fps: int = 8
    video_size: int = 112  # side of the clip frames (the video modality); "frame_size" on disk
    image_size: int = 224
    sample_rate: int = 16000
    n_mels: int = 128
    n_fft: int = 400  # 25 ms window at 16 kHz
    hop_length: int = 160  # 10 ms hop at 16 kHz
    f_min: float = 0.0
    f_max: float | None = None  # None = Nyquist
    jpeg_quality: int = 90
    samples_per_shard: int = 1000
    videos_per_unit: int = 8
    decoder: str = "pyav"
    # Held-out videos (`shards.split`): which shard a sample lands in, so part of the config.
    eval_fraction: float = 0.05
    split_seed: int = 0
    # Read videos and sidecar transcripts that symlinks lead to outside the input folder
    # (`pipeline.media.discover`): what the samples hold, so part of the config. Manifests and stats
    # files written before it existed read as False (`pipeline.prepare.outdir.Fingerprint`).
    follow_symlinks: bool = False

    def __post_init__(self) -> None:
        for name in ("clip_duration", "clip_stride", "fps", "video_size", "image_size",
                     "sample_rate", "n_mels", "n_fft", "hop_length", "samples_per_shard",
                     "videos_per_unit"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not _is_multiple(self.clip_duration, 1.0 / self.fps):
            raise ConfigError(f"clip_duration ({self.clip_duration}) must be a whole number of "
                              f"frames at fps={self.fps} (a multiple of {1.0 / self.fps:g} s)")
        if not _is_multiple(self.clip_stride, 1.0 / self.fps):
            raise ConfigError(f"clip_stride ({self.clip_stride}) must be a multiple of 1/fps "
                              f"({1.0 / self.fps:g} s) so that windows share one frame grid")
        if not _is_multiple(self.clip_duration * self.sample_rate, self.hop_length):
            raise ConfigError(f"clip_duration * sample_rate "
                              f"({self.clip_duration * self.sample_rate:g}) must be a multiple "
                              f"of hop_length ({self.hop_length})")
        if self.n_fft < self.hop_length:
            raise ConfigError(f"n_fft ({self.n_fft}) must be >= hop_length ({self.hop_length})")
        nyquist = self.sample_rate / 2
        if self.f_max is not None and not (self.f_min < self.f_max <= nyquist):
            raise ConfigError(f"f_max must lie in (f_min={self.f_min}, {nyquist}], "
                              f"got {self.f_max}")
        if not 0 <= self.f_min < nyquist:
            raise ConfigError(f"f_min must lie in [0, {nyquist}), got {self.f_min}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"jpeg_quality must lie in [1, 100], got {self.jpeg_quality}")
        if self.decoder not in DECODERS:
            raise ConfigError(f"decoder must be one of {', '.join(DECODERS)}, got {self.decoder!r}")
        if not isinstance(self.follow_symlinks, bool):
            raise ConfigError(f"follow_symlinks must be true or false, got "
                              f"{self.follow_symlinks!r}")
        # `not (0 <= x < 1)` also refuses NaN
        if not 0 <= self.eval_fraction < 1:
            raise ConfigError(f"eval_fraction (the share of videos held out for evaluation) "
                              f"must lie in [0, 1), got {self.eval_fraction!r}")

    @property
    def video_frames(self) -> int:
        """Frames in one clip (16 at the defaults)."""
        return round(self.clip_duration * self.fps)

    @property
    def stride_frames(self) -> int:
        """Grid frames between two consecutive clip starts (8 at the defaults)."""
        return round(self.clip_stride * self.fps)

    @property
    def samples_per_clip(self) -> int:
        """Audio samples in one clip (32000 at the defaults)."""
        return round(self.clip_duration * self.sample_rate)

    @property
    def audio_frames(self) -> int:
        """Mel frames in one clip: one per hop (200 at the defaults)."""
        return self.samples_per_clip // self.hop_length

    @property
    def mel_f_max(self) -> float:
        return self.f_max if self.f_max is not None else self.sample_rate / 2

    def to_dict(self) -> dict[str, Any]:
        """The fields under their names in manifests, stats files and checkpoint cards."""
        return {_ON_DISK.get(name, name): value for name, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrepareConfig:
        data = {_IN_CODE.get(name, name): value for name, value in data.items()}
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown prepare config field(s): {', '.join(sorted(unknown))}")
        return cls(**data)
