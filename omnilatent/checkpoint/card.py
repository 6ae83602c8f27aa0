"""The part of a checkpoint that says how to feed the model and read its text.

A checkpoint holds, besides its weights, a *card*: the tokenizer (byte-level, or a
SentencePiece model copied into the checkpoint folder as `tokenizer.model`), the text length
the model was trained with, and the `omni prepare` settings of its training data (sizes, fps,
clip length, mel parameters). `omni eval` and `omni generate` need nothing else: an input is
prepared with exactly those settings, and the model's ids are decoded with that tokenizer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omnilatent.errors import CheckpointError, ConfigError
from pipeline.config import PrepareConfig
from pipeline.modalities import MAX_TEXT_LEN, check_text_len

TOKENIZER_FILE = "tokenizer.model"
TOKENIZERS = ("byte", "sentencepiece")


@dataclass(frozen=True)
class CheckpointCard:
    """``data_config`` is the PrepareConfig dict of the training data (None for synthetic
    data); ``tokenizer_source`` is where a SentencePiece model is copied from when saving."""

    tokenizer: str = "byte"
    max_text_len: int = MAX_TEXT_LEN
    data_config: dict[str, Any] | None = None
    tokenizer_source: Path | None = None

    def __post_init__(self) -> None:
        if self.tokenizer not in TOKENIZERS:
            raise ConfigError(f"tokenizer must be one of {', '.join(TOKENIZERS)}, "
                              f"got {self.tokenizer!r}")
        if (self.tokenizer == "sentencepiece") != (self.tokenizer_source is not None):
            raise ConfigError("a sentencepiece card needs tokenizer_source (the .model file); "
                              "a byte card has none")
        check_text_len(self.max_text_len)
        if self.data_config is not None:
            try:
                PrepareConfig.from_dict(self.data_config)
            except (TypeError, ValueError, AttributeError) as exc:
                raise ConfigError(f"data_config is not the settings of omni prepare "
                                  f"({type(exc).__name__}: {exc})"[:300]) from None

    def to_state(self) -> dict[str, Any]:
        """The JSON stored in state.json (the tokenizer file is named, not its source)."""
        return {"tokenizer": self.tokenizer, "max_text_len": self.max_text_len,
                "data_config": self.data_config,
                "tokenizer_file": TOKENIZER_FILE if self.tokenizer_source else None}

    def files(self) -> dict[str, Path]:
        """Files to copy into the checkpoint folder: name there -> source."""
        return {} if self.tokenizer_source is None else {TOKENIZER_FILE: self.tokenizer_source}

    @classmethod
    def from_state(cls, data: Any, folder: Path) -> CheckpointCard:
        """Parse the card of the checkpoint in ``folder``; CheckpointError if unusable."""
        if not isinstance(data, dict):
            raise CheckpointError(f"{folder}: state.json has no card (how to tokenize and "
                                  f"prepare inputs); it was written by an older omni")
        try:
            source = folder / TOKENIZER_FILE if data.get("tokenizer_file") else None
            return cls(tokenizer=data["tokenizer"], max_text_len=int(data["max_text_len"]),
                       data_config=data.get("data_config"), tokenizer_source=source)
        except (KeyError, TypeError, ValueError) as err:  # ConfigError is a ValueError
            raise CheckpointError(f"{folder}: malformed card in state.json ({err})") from None
