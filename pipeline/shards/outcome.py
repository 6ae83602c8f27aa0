"""What happened to one video in `omni prepare`: the types the worker reports and the
orchestrator, the output folder's stats files, the manifest, `omni inspect` and the CLI read.

Light on purpose (no decoder, no numpy): every module that only records or reads outcomes
imports it, so `pipeline.shards.manifest` and `pipeline.shards.shardset` stay quick to import.

**Outcome of a video** (`VideoOutcome.status`; which input leads to which, with its reason,
is listed in README.md, "What happens to unusual videos"): ``prepared``, at least one clip
written, decoder and transcript complaints in `warnings`; ``skipped``, nothing wrong with the
file but no sample to make (shorter than one clip, no video stream, a symlink out of the input
folder); ``failed``, the file could not be made into a clip (unreadable, too large, crashed,
timed out, out of memory, raised).

A failure to *write* (full disk, quota, read-only filesystem) is not the video's fault: the
worker reports it as an output error and the run stops (see `OutputError`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pipeline.errors import PipelineError
from pipeline.shards.files import PartFile
from pipeline.shards.split import TRAIN, Split

Status = Literal["prepared", "failed", "skipped"]
PREPARED: Status = "prepared"
FAILED: Status = "failed"
SKIPPED: Status = "skipped"


class OutputError(PipelineError):
    """Writing the output failed (disk full, quota, permissions): stop the run, keep the units
    already committed, and let a rerun resume once the cause is fixed."""


@dataclass
class VideoOutcome:
    """What happened to one video; stored (without `part`) in its unit's stats file."""

    source: str  # path relative to the input folder
    video_id: str
    status: Status = FAILED
    reason: str | None = None  # why it failed or was skipped
    warnings: list[str] = field(default_factory=list)
    clips: int = 0
    clips_with_text: int = 0  # clips whose window overlaps some transcript text
    footage_seconds: float = 0.0  # decoded duration (0 when it could not be decoded)
    has_audio: bool | None = None
    rotation: int | None = None
    flip: bool | None = None  # mirrored left-right for display, after the rotation
    transcript_source: str | None = None
    transcript_timed: bool | None = None
    transcript_error: str | None = None
    packets_skipped: int = 0
    decode_errors: int = 0  # errors the decoders reported (`DecodeStats.decode_errors`)
    wall_seconds: float = 0.0
    split: Split = TRAIN  # which shards its samples went to; stats files without it: train
    part: PartFile | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["part"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VideoOutcome:
        return cls(**{key: value for key, value in data.items() if key != "part"})
