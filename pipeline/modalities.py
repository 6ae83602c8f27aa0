"""The modalities as the data side knows them, and the text conventions: the lowest layer.

Torch-free, so the prepare side, the loader and the model all read it and none reaches into
another for a convention. The model's parts of each modality are
`omnilatent.model.modalities.REGISTRY`, one entry per row here."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import ConfigError

PAD_ID = 0  # padding: loaders right-pad text with it, no tokenizer emits it, the loss skips it
MAX_TEXT_LEN = 128  # tokens one sample's text is cut to (`--max-text-len`, in the card)
MAX_TEXT_LEN_CAP = 4096  # text tokens of one sample, read or generated


def check_text_len(value: object) -> None:
    """The one rule for a text length: `--max-text-len`, a card's, DataOptions'."""
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_TEXT_LEN_CAP:
        raise ConfigError(f"max_text_len must be an integer from 1 to {MAX_TEXT_LEN_CAP}, "
                          f"got {value!r}")


@dataclass(frozen=True)
class Modality:
    name: str
    stored_dtype: str | None  # torch dtype of its stored values; None: token ids
    batch_layout: tuple[int, ...] | None  # permutes stacked samples to channels first
    sizes: tuple[str, ...]  # the sizes prepared data fixes, by OmniLatentConfig's names


TABLE = (
    Modality("text", None, None, ()),
    Modality("audio", "float16", None, ("n_mels", "audio_frames")),  # (B, M, T) as stored
    Modality("image", "uint8", None, ("image_size",)),  # (B, S, S, 3) channels last, as decoded
    Modality("video", "uint8", (0, 4, 1, 2, 3), ("video_frames", "video_size")),  # (B,T,H,W,3)
)
MODALITIES = tuple(modality.name for modality in TABLE)
SIZE_FIELDS = tuple(size for modality in TABLE for size in modality.sizes)
