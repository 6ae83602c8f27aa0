"""Turn one input (a video window, an audio file, a picture, text) into one output file.

The input is read by `pipeline.generate.inputs` (prepare's decode, geometry and mel code,
with the settings on the checkpoint's card) and batched by the loader's own functions; the
output is mapped back from model units (`pipeline.normalize`) and written by
`pipeline.generate.outputs`: text as .txt, a picture as PNG/JPEG/WebP, sound as WAV (log-mel
inverted by Griffin-Lim), a clip as MP4 or GIF at the training fps, each written whole or not at
all (a symlink at the output name is replaced, not written through)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from omnilatent.config import MODALITIES, check_data_fits_model
from omnilatent.errors import ConfigError
from omnilatent.inference.trained import TrainedModel
from pipeline.generate.inputs import (
    MODALITY_EXTENSIONS,
    SampleArrays,
    guess_modality,
    has_video_stream,
    load_input,
    load_video_window,
    sample_arrays_batch,
    text_input,
)
from pipeline.generate.outputs import (
    check_output_file,
    write_image,
    write_text,
    write_video,
    write_wav,
)
from pipeline.media.audio import mel_to_waveform
from pipeline.modalities import MAX_TEXT_LEN_CAP
from pipeline.normalize import model_to_mel, to_device_units, unit_to_pixels
from pipeline.shards.schema import expected_from_config

OUTPUT_SUFFIXES = {"text": (".txt",), "image": (".png", ".jpg", ".jpeg", ".webp"),
                   "audio": (".wav",), "video": (".mp4", ".gif")}
# The part of a video window each source modality reads.
_WINDOW_PART = {"video": "frames", "image": "image", "audio": "mel", "text": "text"}


@dataclass(frozen=True)
class Generated:
    """What was made: the file, the source and target modality, the text for text outputs,
    and notes about the input (a rounded start time, a missing soundtrack)."""

    path: Path
    source: str
    target: str
    text: str | None
    notes: tuple[str, ...]


def check_output_path(target: str, out: str | os.PathLike[str]) -> Path:
    """The output path, refused early (before any decoding) when its type cannot hold
    ``target`` or no file can be written there (`check_output_file`)."""
    if target not in OUTPUT_SUFFIXES:
        raise ConfigError(f"--to must be one of {', '.join(MODALITIES)}, got {target!r}")
    path = Path(out)
    if path.suffix.lower() not in OUTPUT_SUFFIXES[target]:
        raise ConfigError(f"{target} output needs a file ending in "
                          f"{' or '.join(OUTPUT_SUFFIXES[target])}, got {path.name!r}")
    return check_output_file(path)


def read_input(trained: TrainedModel, path: str | os.PathLike[str] | None, text: str | None,
               modality: str | None, start: float, *,
               follow_symlinks: bool = False) -> tuple[str, SampleArrays]:
    """(source modality, arrays) of the input, prepared as the model's training data was.

    A video file can feed any modality: its clip (the default), still image, soundtrack or
    transcript window; other files feed their own modality. A video's sidecar transcript is
    found by prepare's rules (`follow_symlinks` as `omni prepare --follow-symlinks`)."""
    if (path is None) == (text is None):
        raise ConfigError("give exactly one input: a file, or text")
    if modality is not None and modality not in MODALITIES:
        raise ConfigError(f"the input modality must be one of {', '.join(MODALITIES)}, "
                          f"got {modality!r}")
    if text is not None:
        if modality not in (None, "text"):
            raise ConfigError(f"text input cannot be read as {modality}")
        return "text", text_input(text)
    config = trained.data_config
    check_data_fits_model(expected_from_config(config), trained.model.config)
    if Path(path).suffix.lower() in MODALITY_EXTENSIONS["video"] and (
            modality != "audio" or has_video_stream(path)):  # else: a video file of sound
        arrays = load_video_window(path, config, start, follow_symlinks=follow_symlinks)
        source = modality or "video"
    else:
        arrays = load_input(path, config, modality, start, follow_symlinks=follow_symlinks)
        source = modality or guess_modality(path)
    part = getattr(arrays, _WINDOW_PART[source])
    if part is None or (isinstance(part, str) and not part.strip()):
        what = "no transcript text in that window" if source == "text" else f"no {source}"
        raise ConfigError(f"{path}: {what} to generate from")
    return source, arrays


@torch.no_grad()
def generate(trained: TrainedModel, source: str, arrays: SampleArrays, target: str,
             out: str | os.PathLike[str], max_tokens: int | None = None) -> Generated:
    """Run the model from ``source`` (one of the input's modalities) to ``target`` and write
    the result to ``out`` (its suffix picks the format; see OUTPUT_SUFFIXES)."""
    if max_tokens is not None and not 1 <= max_tokens <= MAX_TEXT_LEN_CAP:
        raise ConfigError(f"max_tokens must be from 1 to {MAX_TEXT_LEN_CAP}, got {max_tokens}")
    path = check_output_path(target, out)
    model = trained.model
    device = next(model.parameters()).device
    batch = sample_arrays_batch(arrays, trained.text.encode, trained.card.max_text_len)
    x = to_device_units(source, batch[source], device)  # (1, ...)
    config = trained.data_config
    text = None
    if target == "text":
        length = max_tokens or trained.card.max_text_len
        ids = model.generate_text(source, x, length, vocab_limit=trained.text.vocab_limit,
                                  eos_id=trained.text.eos_id)  # (1, L)
        text = trained.text.decode(ids[0].cpu())
        write_text(path, text)
    else:
        output: Any = model(source, x, target)["output"][0].cpu()
        if target == "image":
            write_image(path, unit_to_pixels(output).permute(1, 2, 0).numpy())  # (S, S, 3)
        elif target == "video":
            frames = unit_to_pixels(output).permute(1, 2, 3, 0).numpy()  # (T, H, W, 3)
            write_video(path, frames, config.fps)
        else:
            log_mel = model_to_mel(output).numpy()  # (M, T)
            write_wav(path, mel_to_waveform(log_mel, config), config.sample_rate)
    return Generated(path, source, target, text, tuple(arrays.notes))
