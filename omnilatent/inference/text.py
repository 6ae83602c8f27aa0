"""Text in and out of a trained model: its tokenizer, and how to read its ids back."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from omnilatent.checkpoint.card import CheckpointCard
from pipeline.tokenizer import (
    BYTE_VOCAB_SIZE,
    EOS_ID,
    SentencePieceTokenizer,
    TokenizerFn,
    byte_detokenize,
    byte_tokenizer,
)


@dataclass(frozen=True)
class TextCodec:
    """``encode`` is the loader's tokenizer; generated ids are kept below ``vocab_limit`` (the
    model's vocabulary may be larger than the tokenizer's), end at ``eos_id`` and become text
    with ``decode``."""

    encode: TokenizerFn
    decode: Callable[[Tensor], str]
    vocab_limit: int | None
    eos_id: int | None


BYTE_CODEC = TextCodec(byte_tokenizer, byte_detokenize, BYTE_VOCAB_SIZE, EOS_ID)


def codec_for(card: CheckpointCard) -> TextCodec:
    """The codec a checkpoint's card names (a SentencePiece model from the checkpoint)."""
    if card.tokenizer == "byte" or card.tokenizer_source is None:
        return BYTE_CODEC
    tokenizer = SentencePieceTokenizer(card.tokenizer_source)
    return TextCodec(tokenizer, tokenizer.decode, tokenizer.vocab_size, tokenizer.eos_id)
