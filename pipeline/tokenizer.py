"""Text to token ids for the loader: a byte-level default and an optional SentencePiece model.

A tokenizer is any picklable callable ``(text, max_len) -> 1-D LongTensor`` (`TokenizerFn`),
so the loader can hand it to DataLoader workers. Id 0 is padding everywhere (the loader
right-pads batches with it and the text loss ignores it), so no tokenizer may emit it.

Byte-level ids: 0 padding, 1 BOS, 2 EOS, 3..258 the UTF-8 bytes 0..255 (vocab >= 259). No
BOS is emitted: the model already starts every sequence with its own modality tokens. EOS is
appended when the whole text and EOS fit in `max_len`, so a model learns where a transcript ends; a
truncated text has no EOS, which tells it the text goes on. Truncation never splits a UTF-8
character. Empty text gives an empty tensor, i.e. a batch row of padding only."""

from __future__ import annotations

import importlib
import itertools
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence

from pipeline.errors import ConfigError, PipelineError
from pipeline.modalities import PAD_ID

TokenizerFn = Callable[[str, int], torch.Tensor]

BOS_ID = 1
EOS_ID = 2
BYTE_OFFSET = 3  # byte b has id b + BYTE_OFFSET
BYTE_VOCAB_SIZE = 256 + BYTE_OFFSET


def pad_texts(texts: Sequence[torch.Tensor]) -> torch.Tensor:
    """Token ids (L_i,) of each sample, right-padded with PAD_ID to the longest (at least 1,
    so a batch of empty texts is one column of padding): (B, L) long. The one padding rule of
    the shard loader, the video loader and `omnilatent.training.collate_multimodal`."""
    if not texts or max(int(text.shape[0]) for text in texts) == 0:
        return torch.full((len(texts), 1), PAD_ID, dtype=torch.long)  # (B, 1)
    return pad_sequence(list(texts), batch_first=True, padding_value=PAD_ID).long()  # (B, L)


def _check_max_len(max_len: int) -> None:
    if max_len < 1:
        raise ConfigError(f"max_len (the text length in tokens) must be >= 1, got {max_len}")


def byte_tokenizer(text: str, max_len: int) -> torch.Tensor:
    """UTF-8 bytes of `text` as ids 3..258 plus EOS when it fits: (L,) long, L <= max_len."""
    _check_max_len(max_len)
    data = text.encode("utf-8")
    if len(data) < max_len:
        ids = [byte + BYTE_OFFSET for byte in data]
        return torch.tensor([*ids, EOS_ID] if ids else [], dtype=torch.long)  # (L,)
    cut = max_len
    while 0 < cut < len(data) and data[cut] & 0xC0 == 0x80:  # a continuation byte: back up
        cut -= 1
    return torch.tensor([byte + BYTE_OFFSET for byte in data[:cut]], dtype=torch.long)  # (L,)


def byte_detokenize(ids: torch.Tensor | Iterable[int]) -> str:
    """The text of byte-level ids, for display: stops at EOS, skips padding and BOS.

    Ids outside the byte range (e.g. from a model's larger vocabulary) are skipped and broken
    UTF-8 becomes U+FFFD, so any model output can be shown."""
    values = ids.tolist() if isinstance(ids, torch.Tensor) else ids
    data = bytes(value - BYTE_OFFSET for value in itertools.takewhile(lambda v: v != EOS_ID, values)
                 if BYTE_OFFSET <= value < BYTE_VOCAB_SIZE)
    return data.decode("utf-8", errors="replace")


class SentencePieceTokenizer:
    """A SentencePiece model as a `TokenizerFn`; ids are the model's ids plus one.

    SentencePiece models usually give id 0 to <unk>, which would collide with padding, so
    every id is shifted by one: a model with vocabulary V needs a text vocabulary of V + 1.
    EOS (the model's, if it has one) follows the same rule as the byte tokenizer. The model
    file is loaded lazily, once per process, so instances pickle into DataLoader workers."""

    def __init__(self, model_path: str | Path) -> None:
        self.model_path = str(model_path)
        self._processor: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"model_path": self.model_path, "_processor": None}

    @property
    def vocab_size(self) -> int:
        """Ids this tokenizer can emit, padding included: the model's vocabulary + 1."""
        return int(self._load().get_piece_size()) + 1

    def _load(self) -> Any:
        if self._processor is None:
            sentencepiece = _import_sentencepiece()
            self._processor = sentencepiece.SentencePieceProcessor(model_file=self.model_path)
        return self._processor

    @property
    def eos_id(self) -> int | None:
        """The (shifted) id of the model's EOS, or None when it has none."""
        eos = int(self._load().eos_id())
        return eos + 1 if eos >= 0 else None

    def decode(self, ids: torch.Tensor | Iterable[int]) -> str:
        """Text of (shifted) ids, for display: stops at EOS, skips padding and unknown ids."""
        values = ids.tolist() if isinstance(ids, torch.Tensor) else ids
        processor = self._load()
        size, eos = processor.get_piece_size(), self.eos_id
        return str(processor.decode([value - 1 for value in
                                     itertools.takewhile(lambda value: value != eos, values)
                                     if 0 < value <= size]))

    def __call__(self, text: str, max_len: int) -> torch.Tensor:
        _check_max_len(max_len)
        processor = self._load()
        ids = [piece + 1 for piece in processor.encode(text)]
        eos = processor.eos_id()
        if ids and eos >= 0 and len(ids) < max_len:
            ids.append(eos + 1)
        return torch.tensor(ids[:max_len], dtype=torch.long)  # (L,)


def _import_sentencepiece() -> Any:
    try:
        return importlib.import_module("sentencepiece")
    except ImportError as err:
        raise PipelineError("the sentencepiece tokenizer needs the sentencepiece package: "
                            "pip install sentencepiece") from err


def sentencepiece_tokenizer(model_path: str | Path) -> TokenizerFn:
    """A `TokenizerFn` for the SentencePiece model at `model_path` (see SentencePieceTokenizer).

    Checks now that sentencepiece is installed and the file exists, so a misconfiguration
    fails when the loader is built, not in a worker mid-epoch."""
    _import_sentencepiece()
    if not Path(model_path).is_file():
        raise ConfigError(f"SentencePiece model {model_path} does not exist; pass the .model "
                          f"file written by spm_train")
    return SentencePieceTokenizer(model_path)
