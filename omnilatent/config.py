"""Model configuration: one validated dataclass; its model fields are stored in every
checkpoint."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from omnilatent.errors import ConfigError
from pipeline.modalities import MODALITIES, SIZE_FIELDS

__all__ = ["MODALITIES", "OmniLatentConfig"]
TEXT_DECODINGS = ("autoregressive", "parallel")
# The seed's training fields of OmniLatentConfig -> the TrainConfig field each one sets
# (`batch_size` sets none: the DataLoader takes it).
TRAINING_FIELDS = {"batch_size": None, "learning_rate": "lr", "weight_decay": "weight_decay",
                   "warmup_steps": "warmup_steps", "max_steps": "steps",
                   "mixed_precision": "amp", "grad_clip": "grad_clip", "seed": "seed"}
# Caps on what a config may declare. A checkpoint's state.json is read into one, and the
# model is built from it (on the meta device) before its weights are compared with the
# safetensors header; no model this code trains comes near them (README: checkpoint format).
FIELD_CAPS = {"hidden_dim": 16384, "num_layers": 512, "num_heads": 512, "mlp_hidden_dim": 65536,
              "vocab_size": 1 << 20, "n_mels": 1024, "audio_frames": 65536,
              "audio_stride": 64, "image_size": 4096, "patch_size": 64, "video_size": 4096,
              "video_frames": 1024, "tubelet_size": 64, "decoder_layers": 64}
# Tokens one image, clip or mel window may become (attention cost grows with their square;
# image_size changes no weight, so only this bounds it).
MAX_MODALITY_TOKENS = 4096


@dataclass(frozen=True)
class OmniLatentConfig:
    """Sizes of the backbone and of each modality's encoder/decoder.

    The defaults (768 wide, 12 layers, 32000-token vocabulary) give 157.09M parameters
    (132.71M with the 259 byte-level ids `omni train` uses without a tokenizer); ``hidden_dim=128,
    num_layers=4, num_heads=4`` is the debug size used by the tests.

    The last block, ``TRAINING_FIELDS``, is not the model's: the seed's API passes training
    settings here (``OmniLatentConfig(batch_size=4, learning_rate=3e-4, ...)`` then
    ``Trainer(model, config, loader)``), so they are accepted as optional defaults that
    `omnilatent.training.TrainConfig.from_model_config` turns into trainer settings. They
    change no weight or shape, so they are left out of ``to_dict`` (a checkpoint's model
    config) and of ``==`` (the same model with another learning rate is the same model)."""

    hidden_dim: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_hidden_dim: int | None = None  # None: 10/3 x hidden_dim, rounded up to 32
    vocab_size: int = 32000
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
    # training defaults (TRAINING_FIELDS; None: TrainConfig's default), not the model's
    batch_size: int | None = field(default=None, compare=False)  # for your DataLoader
    learning_rate: float | None = field(default=None, compare=False)
    weight_decay: float | None = field(default=None, compare=False)
    warmup_steps: int | None = field(default=None, compare=False)
    max_steps: int | None = field(default=None, compare=False)
    mixed_precision: bool | None = field(default=None, compare=False)
    grad_clip: float | None = field(default=None, compare=False)
    seed: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.mlp_hidden_dim is None and isinstance(self.hidden_dim, int):
            object.__setattr__(self, "mlp_hidden_dim", -(-self.hidden_dim * 10 // 3 // 32) * 32)
        for name in FIELD_CAPS:  # every size: a positive integer, at most its cap
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
            if value > FIELD_CAPS[name]:
                raise ConfigError(f"{name} must be at most {FIELD_CAPS[name]}, got {value}")
        if self.hidden_dim % self.num_heads:
            raise ConfigError(f"hidden_dim ({self.hidden_dim}) must be divisible by num_heads "
                              f"({self.num_heads})")
        if (self.hidden_dim // self.num_heads) % 2:
            raise ConfigError(f"head dim hidden_dim/num_heads = {self.hidden_dim // self.num_heads}"
                              " must be even for rotary position embeddings")
        if self.vocab_size < 2:
            raise ConfigError("vocab_size must be >= 2 (id 0 is padding)")
        for size_name in ("image_size", "video_size"):
            if getattr(self, size_name) % self.patch_size:
                raise ConfigError(f"{size_name} ({getattr(self, size_name)}) must be a multiple of "
                                  f"patch_size ({self.patch_size})")
        if self.video_frames % self.tubelet_size:
            raise ConfigError(f"video_frames ({self.video_frames}) must be a multiple of "
                              f"tubelet_size ({self.tubelet_size})")
        side, video_side = self.image_size // self.patch_size, self.video_size // self.patch_size
        tokens = {"image": side**2, "audio": self.audio_frames // self.audio_stride,
                  "video": self.video_frames // self.tubelet_size * video_side**2}
        for modality, count in tokens.items():
            if count > MAX_MODALITY_TOKENS:
                raise ConfigError(f"one {modality} input would be {count} tokens, more than "
                                  f"{MAX_MODALITY_TOKENS}: lower its size or raise patch_size"
                                  + (" or audio_stride" if modality == "audio" else ""))
        if self.text_decoding not in TEXT_DECODINGS:
            raise ConfigError(f"text_decoding must be one of {', '.join(TEXT_DECODINGS)}, "
                              f"got {self.text_decoding!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must lie in [0, 1), got {self.dropout!r}")
        if self.rope_theta <= 0 or self.norm_eps <= 0:
            raise ConfigError("rope_theta and norm_eps must be > 0")
        self._check_training_fields()

    def _check_training_fields(self) -> None:
        """Types and ranges here, where the config is built; TrainConfig checks the rest
        (e.g. warmup_steps <= max_steps) when `Trainer` turns them into one."""
        def bad(name: str, expected: str) -> ConfigError:
            return ConfigError(f"{name} must be None (the trainer's default) or {expected}, "
                               f"got {getattr(self, name)!r}")

        for names, types, positive, expected in (
                (("batch_size", "max_steps"), int, True, "a positive integer"),
                (("warmup_steps", "seed"), int, False, "an integer >= 0"),
                (("learning_rate",), (int, float), True, "a number > 0"),
                (("weight_decay", "grad_clip"), (int, float), False, "a number >= 0")):
            for name in names:
                value = getattr(self, name)
                if value is not None and (not isinstance(value, types) or isinstance(value, bool)
                                          or (value <= 0 if positive else value < 0)):
                    raise bad(name, expected)
        if self.mixed_precision is not None and not isinstance(self.mixed_precision, bool):
            raise bad("mixed_precision", "True or False")

    @property
    def head_dim(self) -> int:
        return self.hidden_dim // self.num_heads

    def training_defaults(self) -> dict[str, Any]:
        """The training fields that were set (not None), by their names here."""
        return {name: getattr(self, name) for name in TRAINING_FIELDS
                if getattr(self, name) is not None}

    def to_dict(self) -> dict[str, Any]:
        """The model's fields (what a checkpoint stores), without the training defaults."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in TRAINING_FIELDS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OmniLatentConfig:
        """The config a checkpoint stored; its ``max_text_len`` (earlier checkpoints', unused:
        the card's) is dropped."""
        data = {name: value for name, value in data.items() if name != "max_text_len"}
        known = {f.name for f in fields(cls)} - set(TRAINING_FIELDS)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown OmniLatentConfig field(s): {', '.join(unknown)}")
        return cls(**data)


def model_sizes(expected: dict[str, Any]) -> dict[str, int]:
    """The OmniLatentConfig fields that data prepared with ``expected`` sizes dictates."""
    return {name: int(expected[name]) for name in SIZE_FIELDS}


def check_data_fits_model(expected: dict[str, Any], config: OmniLatentConfig) -> None:
    """Raise ConfigError naming every size where the data and the model disagree."""
    problems = [f"data {name}={expected[name]} but model {name}={getattr(config, name)}"
                for name in SIZE_FIELDS if int(expected[name]) != getattr(config, name)]
    if problems:
        raise ConfigError("the data does not fit the model: " + "; ".join(problems)
                          + " (prepare the videos with matching --frame-size/--image-size/--n-mels/"
                          "--fps/--clip-duration, or train a new model on this data)")
