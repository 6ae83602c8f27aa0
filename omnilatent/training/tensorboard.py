"""TensorBoard event files for a training run, written by trainer callbacks.

The metrics records (`Trainer._log`) and eval records become scalars, so a run can be watched
live with ``tensorboard --logdir SAVE_DIR`` next to its metrics.jsonl. A resumed run purges
the events a killed run wrote after its checkpoint (``purge_step``), as the trainer truncates
metrics.jsonl, so no step appears twice."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import make_grid

from omnilatent.training.run_log import dropped_share
from omnilatent.training.trainer import Trainer, TrainerCallbacks
from pipeline.config import PrepareConfig
from pipeline.media.audio import mel_to_waveform
from pipeline.normalize import model_to_mel

FRAME_PADDING = 2  # pixels of white between the frames of a video's grid


def frame_grid(video: Tensor) -> Tensor:
    """A video (C, T, H, W) in [0, 1] as one picture of its frames in reading order, in a
    grid about as wide as tall (32 frames of 112 px: 6 x 6, 676 px square, where a row of
    them was a 3584 x 112 strip; TensorBoard's add_video would need moviepy)."""
    frames = video.transpose(0, 1)  # (T, C, H, W)
    columns = math.ceil(math.sqrt(frames.shape[0]))
    return make_grid(frames, nrow=columns, padding=FRAME_PADDING, pad_value=1.0)


def _picture(prediction: Tensor) -> Tensor:
    """A predicted image (N, 3, H, W), video (N, 3, T, H, W) or log-mel (N, M, T) as images
    (N, C, H, W) in [0, 1]: a video's frames as a grid (`frame_grid`), a mel with its low
    bands at the bottom, scaled to its own range."""
    if prediction.dim() == 5:
        return torch.stack([frame_grid(video) for video in ((prediction + 1) / 2).clamp(0, 1)])
    if prediction.dim() == 4:
        return ((prediction + 1) / 2).clamp(0, 1)
    mel = prediction.flip(1).unsqueeze(1)  # (N, 1, M, T)
    low = mel.amin(dim=(2, 3), keepdim=True)
    high = mel.amax(dim=(2, 3), keepdim=True)
    return (mel - low) / (high - low).clamp_min(1e-6)


def flat_scalars(prefix: str, tree: dict[str, Any]) -> dict[str, float]:
    """The numeric leaves of a nested record as ``{"prefix/a/b": value}`` (bools, strings and
    lists left out: TensorBoard scalars are numbers)."""
    scalars: dict[str, float] = {}
    for key, value in tree.items():
        tag = f"{prefix}/{key}"
        if isinstance(value, dict):
            scalars.update(flat_scalars(tag, value))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            scalars[tag] = float(value)
    return scalars


class TensorBoardCallbacks(TrainerCallbacks):
    """Writes each metrics record and eval record of a run into ``log_dir`` (the run's save
    dir) as the scalars, images and audio README.md lists ("TensorBoard"); a predicted
    log-mel is audio only when the trainer's card names the `omni prepare` settings of its
    data (synthetic mels belong to no sample rate). ``enabled=False`` writes nothing (ranks
    other than 0). The writer opens in ``on_start``, where the trainer's step (after a
    resume) is known; call ``close`` when the run ends to flush it."""

    def __init__(self, log_dir: Path, enabled: bool = True) -> None:
        self.log_dir = Path(log_dir)
        self.enabled = enabled
        self.writer: SummaryWriter | None = None
        self._phases: list[str] = []
        self._phase: str | None = None
        self._samples: dict[str, Tensor] = {}
        self._audio: PrepareConfig | None = None  # the data's settings, to make mels audible

    def on_start(self, trainer: Trainer) -> None:
        if not self.enabled:
            return
        self.close()
        # events of steps after the checkpoint resumed from (a killed run's) are hidden; on a
        # fresh run (step 0) those of an earlier run into the same folder are
        self.writer = SummaryWriter(str(self.log_dir), purge_step=trainer.step + 1)
        spans = getattr(trainer.sampler, "spans", [])  # a curriculum's phases, in order
        self._phases = list(dict.fromkeys(span.phase.name for span in spans))
        self._phase = None
        card = getattr(trainer, "card", None)
        data = None if card is None else card.data_config
        self._audio = None if data is None else PrepareConfig.from_dict(data)

    def on_log(self, record: dict[str, Any]) -> None:
        if self.writer is None:
            return
        step = record["step"]
        scalars = {"loss/all": record["loss"], "lr": record["lr"],
                   "throughput/samples_per_s": record["samples_per_s"],
                   "throughput/tokens_per_s": record["tokens_per_s"],
                   "data/skipped_batches": record["skipped_batches"]}
        scalars.update({f"loss/{task}": loss for task, loss in record["losses"].items()})
        if "data" in record:
            scalars.update(flat_scalars("data", record["data"]))
            scalars["data/dropped_share"] = dropped_share(record["data"])
        phase = record.get("phase")
        if phase is not None:
            if phase in self._phases:
                scalars["phase"] = self._phases.index(phase)
            if phase != self._phase:
                self.writer.add_text("phase", phase, step)
                self._phase = phase
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)

    def on_eval(self, record: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for tag, value in flat_scalars("eval", record["eval"]).items():
            self.writer.add_scalar(tag, value, record["step"])
        for task, prediction in self._samples.items():
            self.writer.add_images(f"eval/{task}", _picture(prediction), record["step"])
            if prediction.dim() == 3 and self._audio is not None:  # (N, M, T) log-mels
                for window, mel in enumerate(prediction):
                    wave = mel_to_waveform(model_to_mel(mel).numpy(), self._audio)  # (S,)
                    self.writer.add_audio(f"eval/{task}/{window}", torch.from_numpy(wave),
                                          record["step"], sample_rate=self._audio.sample_rate)
        self._samples = {}
        self.writer.flush()  # evaluations are rare: show them at once

    def eval_samples(self, samples: dict[str, Tensor]) -> None:
        """Keep an evaluation's predictions by task (`EvalReport.samples`) for its record,
        which ``on_eval`` receives next (the evaluator runs before the record exists)."""
        if self.enabled:
            self._samples = dict(samples)

    def close(self) -> None:
        """Flush and close the event file (a no-op when none is open)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
