"""What happened to one video in `omni prepare`: the types the worker reports and the
orchestrator, the output folder's stats files, the manifest, `omni inspect` and the CLI read.

Light on purpose (no decoder, no numpy): every module that only records or reads outcomes
imports it, so `pipeline.shards.manifest` and `pipeline.shards.shardset` stay quick to import.

**Outcome of a video** (`VideoOutcome.status`):

- ``prepared``: at least one clip written. Decoder complaints (a truncated file, corrupt
  packets) and transcript problems are listed in `warnings`; a malformed subtitle file leaves
  the video without text (`transcript_source` "none", `transcript_error` set).
- ``skipped``: nothing wrong with the file, but no sample to make: shorter than one clip
  ("shorter than one clip (1.50 s < 2 s)"), no video stream ("no video stream (audio only)"),
  or not to be read (a symlink out of the input folder, `VideoSource.refused`; never opened).
- ``failed``: unreadable (zero bytes, not media, an MP4 cut before its index was written, no
  decodable frame, no complete clip before the decoder gave up, or cut short before the
  first clip ends while the container states a longer duration), frames too large to decode
  (`pipeline.media.frames.MAX_FRAME_BYTES`), crashed ("worker crashed with SIGSEGV"), timed out
  ("timed out after 60 s"), out of memory ("out of memory (a prepare worker may reserve ...)")
  or raised ("<ExceptionType>: message").

A failure to *write* (full disk, quota, read-only filesystem) is not the video's fault: the
worker reports it as an output error and the run stops (see `OutputError`).
"""

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
