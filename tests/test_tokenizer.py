"""Byte-level tokenizer: ids, EOS and truncation rules, detokenizing; sentencepiece absence."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import pytest
import torch

from pipeline.errors import ConfigError, PipelineError
from pipeline.tokenizer import (
    BYTE_OFFSET,
    BYTE_VOCAB_SIZE,
    EOS_ID,
    PAD_ID,
    byte_detokenize,
    byte_tokenizer,
    sentencepiece_tokenizer,
)


def test_ascii_text_maps_bytes_to_ids_and_ends_with_eos() -> None:
    ids = byte_tokenizer("Hi!", 16)
    assert ids.dtype == torch.long and ids.dim() == 1
    assert ids.tolist() == [ord("H") + 3, ord("i") + 3, ord("!") + 3, EOS_ID]


def test_empty_text_gives_an_empty_tensor() -> None:
    ids = byte_tokenizer("", 8)
    assert ids.shape == (0,) and ids.dtype == torch.long


def test_every_byte_value_stays_inside_the_vocabulary_and_off_padding() -> None:
    text = bytes(range(128)).decode("ascii") + "é漢🙂"
    ids = byte_tokenizer(text, 1000)
    assert int(ids.min()) > PAD_ID
    assert int(ids.max()) < BYTE_VOCAB_SIZE
    assert int(ids[:-1].min()) >= BYTE_OFFSET


def test_eos_only_when_text_and_eos_fit() -> None:
    assert byte_tokenizer("abc", 4).tolist()[-1] == EOS_ID  # 3 bytes + EOS fit in 4
    exact = byte_tokenizer("abcd", 4)
    assert len(exact) == 4 and EOS_ID not in exact.tolist()  # no room for EOS: reads as cut
    cut = byte_tokenizer("abcdefgh", 4)
    assert byte_detokenize(cut) == "abcd"


def test_truncation_never_splits_a_utf8_character() -> None:
    text = "aé漢"  # bytes: a | c3 a9 | e6 bc a2
    for max_len in range(1, 7):
        ids = byte_tokenizer(text, max_len)
        assert len(ids) <= max_len
        decoded = bytes(i - BYTE_OFFSET for i in ids.tolist() if i != EOS_ID)
        decoded.decode("utf-8")  # raises if a character was cut in half
    assert byte_detokenize(byte_tokenizer(text, 2)) == "a"
    assert byte_detokenize(byte_tokenizer(text, 5)) == "aé"


def test_detokenize_round_trips_and_ignores_padding_and_foreign_ids() -> None:
    text = "Grüße, 世界 🙂"
    ids = byte_tokenizer(text, 256)
    padded = torch.cat([ids, torch.zeros(5, dtype=torch.long)])
    assert byte_detokenize(padded) == text
    assert byte_detokenize([1, ord("o") + 3, 9999, ord("k") + 3, EOS_ID, ord("x") + 3]) == "ok"


def test_max_len_below_one_is_refused() -> None:
    with pytest.raises(ConfigError, match="max_len"):
        byte_tokenizer("abc", 0)


def test_byte_tokenizer_pickles_for_dataloader_workers() -> None:
    restored = pickle.loads(pickle.dumps(byte_tokenizer))
    assert torch.equal(restored("xyz", 8), byte_tokenizer("xyz", 8))


def test_sentencepiece_missing_says_how_to_install(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # makes the import fail
    model = tmp_path / "spm.model"
    model.write_bytes(b"not used")
    with pytest.raises(PipelineError, match="pip install sentencepiece"):
        sentencepiece_tokenizer(model)
