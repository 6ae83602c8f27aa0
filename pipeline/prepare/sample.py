"""Assemble one shard sample from a decoded window, its video's facts and its transcript.

This is the only place that decides what goes into a sample's members; `pipeline.shards` then
checks and encodes them. Choices made here:

- **Audio.** A video with an audio stream gets `log_mel` of its window (silence where the
  stream has ended or not started yet); one without gets `silent_log_mel`, the same values as
  digital silence, and `has_audio: false` in its json so a trainer can mask the modality.
- **Text.** `text_for_window` of the video's transcript: the cues overlapping the window for
  timed transcripts (SRT, WebVTT, embedded); for an untimed `.txt`, the words spread evenly
  over the picture's duration (the end of its last video packet, else the container's stated
  duration; see `video_context`), with `transcript_timed: false`. A video whose untimed
  transcript cannot be placed because neither is known gets no text (see
  `VideoContext.for_video`). A window's text is cut to
  `pipeline.media.transcripts.MAX_WINDOW_TEXT_BYTES` (`SampleFields.text_cut`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.config import PrepareConfig
from pipeline.errors import PipelineError
from pipeline.media.audio import log_mel, silent_log_mel
from pipeline.media.decode import video_end
from pipeline.media.discover import VideoSource
from pipeline.media.subtitles import find_transcript
from pipeline.media.transcripts import Transcript, WindowText, text_for_window
from pipeline.media.windows import VideoInfo, Window
from pipeline.shards.encode import encode_sample
from pipeline.shards.schema import DEFAULT_CLIP_ENCODING, SampleMeta

NO_TRANSCRIPT = Transcript([], "none", timed=True)


@dataclass(frozen=True)
class VideoContext:
    """What every sample of one video shares: its source, stream facts and transcript.

    `text_duration` is the duration an untimed transcript is spread over (None for timed
    transcripts, which do not need one)."""

    source: VideoSource
    rotation: int
    has_audio: bool
    transcript: Transcript
    text_duration: float | None = None
    clip_encoding: str = DEFAULT_CLIP_ENCODING

    @classmethod
    def for_video(cls, source: VideoSource, rotation: int, has_audio: bool,
                  transcript: Transcript, duration_hint: float | None,
                  clip_encoding: str = DEFAULT_CLIP_ENCODING) -> tuple[VideoContext, str | None]:
        """The context of a video, and a warning when its transcript had to be dropped.

        An untimed transcript needs the duration to spread its words over before decoding
        starts (samples are written as they are decoded): `duration_hint`, which
        `video_context` makes the end of the picture (its last video packet), or the
        container's stated duration when no packet is timed. Without one the transcript is
        dropped with a warning rather than the video failing."""
        warning = None
        if not transcript.timed and not (duration_hint and duration_hint > 0):
            warning = ("untimed .txt transcript ignored: the container states no duration to "
                       "spread its words over")
            transcript = NO_TRANSCRIPT
        text_duration = None if transcript.timed else duration_hint
        return cls(source, rotation, has_audio, transcript, text_duration, clip_encoding), warning


@dataclass(frozen=True)
class ProbedContext:
    """`video_context`'s result: the context, warnings for the user (transcript notes, a
    transcript ignored, an untimed one dropped) and why the transcript was unreadable."""

    context: VideoContext
    warnings: tuple[str, ...] = ()
    transcript_error: str | None = None


def video_context(source: VideoSource, info: VideoInfo,
                  clip_encoding: str = DEFAULT_CLIP_ENCODING, *,
                  follow_symlinks: bool = False) -> ProbedContext:
    """The context `omni prepare` gives a probed video (and `omni generate` an input video).

    Its transcript is found as for any video (`find_transcript` in the source's input folder:
    a sidecar that a symlink leads out of it is not read unless `follow_symlinks`); one that
    cannot be read costs the text, never the video. Untimed words are spread over the picture
    itself (the end of the last video packet), not the container's duration, which covers
    longer audio, Matroska start offsets, or nothing at all for streamed files; that duration
    is used only when no video packet is timed."""
    warnings: list[str] = []
    error = None
    try:
        transcript = find_transcript(source.path, root=source.root, follow_symlinks=follow_symlinks)
        warnings += [f"transcript: {note}" for note in transcript.notes]
    except PipelineError as err:
        transcript, error = NO_TRANSCRIPT, str(err)
        warnings.append(f"transcript ignored: {err}")
    text_duration = info.duration_hint
    if transcript.cues and not transcript.timed:
        text_duration = video_end(source.path) or text_duration
    context, warning = VideoContext.for_video(source, info.rotation, info.has_audio,
                                              transcript, text_duration, clip_encoding)
    if warning:
        warnings.append(warning)
    return ProbedContext(context, tuple(warnings), error)


def window_text(window: Window, context: VideoContext) -> WindowText:
    """The transcript text of one window (empty when the video has no transcript)."""
    if not context.transcript.cues:
        return WindowText("")
    return text_for_window(context.transcript, window.start, window.end,
                           context.text_duration or 0.0)


@dataclass(frozen=True)
class SampleFields:
    """One window's sample before encoding: what the shards store, as arrays."""

    key: str
    meta: SampleMeta
    mel: np.ndarray  # (n_mels, audio_frames) float16
    image: np.ndarray  # (image_size, image_size, 3) uint8
    frames: np.ndarray  # (video_frames, video_size, video_size, 3) uint8
    text: str
    text_cut: bool = False  # the window's text was longer than MAX_WINDOW_TEXT_BYTES


def sample_fields(window: Window, context: VideoContext, config: PrepareConfig) -> SampleFields:
    """The sample of one window; `omni prepare` encodes it, `--video-dir` training uses it as
    it is, so both see the same mel, text and metadata."""
    meta = SampleMeta.build(config, source=context.source.rel_path,
                            video_id=context.source.video_id, clip_index=window.index,
                            start=window.start, end=window.end, rotation=context.rotation,
                            has_audio=context.has_audio,
                            transcript_source=context.transcript.source,
                            transcript_timed=context.transcript.timed,
                            clip_encoding=context.clip_encoding)
    mel = log_mel(window.audio, config) if context.has_audio else silent_log_mel(config)
    text = window_text(window, context)
    return SampleFields(meta.key, meta, mel, window.image, window.frames, text.text, text.cut)


def encode_fields(fields: SampleFields, config: PrepareConfig,
                  clip_encoding: str = DEFAULT_CLIP_ENCODING) -> dict[str, str | bytes]:
    """The webdataset members of one window's fields: `pipeline.shards.encode.encode_sample`'s
    output. Raises ValueError (from the schema's checks) if they do not match `config`."""
    return encode_sample(fields.key, fields.meta, fields.mel, fields.image, fields.frames,
                         fields.text, config, clip_encoding)
