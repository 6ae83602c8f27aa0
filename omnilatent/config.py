"""Model configuration: one validated dataclass, stored verbatim in every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from omnilatent.errors import ConfigError

MODALITIES = ("text", "audio", "image", "video")
TEXT_DECODINGS = ("autoregressive", "parallel")


@dataclass(frozen=True)
class OmniLatentConfig:
    """Sizes of the backbone and of each modality's encoder/decoder.

    The defaults (768 wide, 12 layers) give about 140M parameters; ``hidden_dim=128,
    num_layers=4, num_heads=4`` is the debug size used by the tests.
    """

    hidden_dim: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_hidden_dim: int | None = None  # None: 10/3 x hidden_dim, rounded up to 32
    vocab_size: int = 32000
    max_text_len: int = 512
    # audio: log-mel (B, n_mels, T); the encoder downsamples time by audio_stride
    n_mels: int = 128
    audio_frames: int = 200
    audio_stride: int = 4
    # image: (B, 3, image_size, image_size) in 16x16 patches
    image_size: int = 224
    patch_size: int = 16
    # video: (B, 3, video_frames, video_size, video_size) in tubelet x patch x patch tubes
    video_size: int = 112
    video_frames: int = 16
    tubelet_size: int = 4
    # target decoder: query blocks between the backbone and each modality's output head
    decoder_layers: int = 2
    text_decoding: str = "autoregressive"  # or "parallel" (see omnilatent/model/decoder.py)
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    dropout: float = 0.0
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.mlp_hidden_dim is None and isinstance(self.hidden_dim, int):
            object.__setattr__(self, "mlp_hidden_dim", -(-self.hidden_dim * 10 // 3 // 32) * 32)
        positive = ("hidden_dim", "num_layers", "num_heads", "mlp_hidden_dim", "vocab_size",
                    "max_text_len", "n_mels", "audio_frames", "audio_stride", "image_size",
                    "patch_size", "video_size", "video_frames", "tubelet_size", "decoder_layers")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.hidden_dim % self.num_heads:
            raise ConfigError(
                f"hidden_dim ({self.hidden_dim}) must be divisible by num_heads ({self.num_heads})"
            )
        if (self.hidden_dim // self.num_heads) % 2:
            raise ConfigError(
                f"head dim hidden_dim/num_heads = {self.hidden_dim // self.num_heads} must be even "
                "for rotary position embeddings"
            )
        if self.vocab_size < 2:
            raise ConfigError("vocab_size must be >= 2 (id 0 is padding)")
        for size_name in ("image_size", "video_size"):
            if getattr(self, size_name) % self.patch_size:
                raise ConfigError(
                    f"{size_name} ({getattr(self, size_name)}) must be a multiple of "
                    f"patch_size ({self.patch_size})"
                )
        if self.video_frames % self.tubelet_size:
            raise ConfigError(
                f"video_frames ({self.video_frames}) must be a multiple of "
                f"tubelet_size ({self.tubelet_size})"
            )
        if self.text_decoding not in TEXT_DECODINGS:
            raise ConfigError(f"text_decoding must be one of {', '.join(TEXT_DECODINGS)}, "
                              f"got {self.text_decoding!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must lie in [0, 1), got {self.dropout!r}")
        if self.rope_theta <= 0 or self.norm_eps <= 0:
            raise ConfigError("rope_theta and norm_eps must be > 0")

    @property
    def head_dim(self) -> int:
        return self.hidden_dim // self.num_heads

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def video_grid(self) -> tuple[int, int, int]:
        """(time, height, width) of the video token grid: (4, 7, 7) at the defaults."""
        side = self.video_size // self.patch_size
        return (self.video_frames // self.tubelet_size, side, side)

    @property
    def video_tokens(self) -> int:
        t, h, w = self.video_grid
        return t * h * w

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OmniLatentConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown OmniLatentConfig field(s): {', '.join(unknown)}")
        return cls(**data)
