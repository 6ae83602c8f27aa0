"""Input files for `omni generate`, turned into exactly the arrays `omni prepare` stores.

A model only knows its inputs through the prepare pipeline, so every input goes through that
pipeline's own code, never a look-alike: `iter_windows` and `sample_fields` for a video, the
PyAV backend's resampler and timeline for an audio file, its `scale_to_rgb` and
`display_image` for a picture. What each kind of input becomes is stated in README.md, "How
inputs are prepared". Only regular files are read (`regular_input`): opening a FIFO waits
for a writer forever.

`sample_arrays_batch` turns the arrays into a batch of one with the loader's own
`sample_tensors` and `collate`, in the loader's stored dtypes, a video window as the loader
gives its clip (`loader_clip`: I420 frames of the mp4 prepare stores); `pipeline.normalize`'s
`to_model_units` then gives the model the training normalisation, as it does to a loader batch."""

from __future__ import annotations

import math
import os
import stat
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, Literal

import av
import numpy as np
from av.video.reformatter import VideoReformatter
from PIL import Image, ImageMode, ImageOps, UnidentifiedImageError

from pipeline.config import PrepareConfig
from pipeline.errors import DecodeError, MediaError
from pipeline.loader.batches import Batch, collate
from pipeline.loader.samples import sample_tensors
from pipeline.media.audio import log_mel
from pipeline.media.decode import probe, window_from
from pipeline.media.decode_pyav import MonoResampler, scale_to_rgb
from pipeline.media.discover import VIDEO_EXTENSIONS, VideoSource, video_id
from pipeline.media.frames import display_image, frame_size_problem, scaled_size
from pipeline.media.packets import decoded_frames
from pipeline.media.probe import open_container, origin
from pipeline.media.transcripts import file_kind, read_text_file
from pipeline.media.windows import (
    AUDIO_HARD_COMPENSATION_S,
    END_TOLERANCE,
    AudioBuffer,
    DecodeStats,
    grid_frames_within,
)
from pipeline.prepare.sample import sample_fields, video_context
from pipeline.shards.decode import decode_member, i420_shape
from pipeline.shards.encode import encode_clip
from pipeline.shards.schema import CLIP_PREFIX
from pipeline.tokenizer import TokenizerFn, byte_tokenizer

Modality = Literal["text", "audio", "image", "video"]
MODALITY_EXTENSIONS: dict[Modality, frozenset[str]] = {
    "video": VIDEO_EXTENSIONS,
    "audio": frozenset({".wav", ".flac", ".mp3", ".ogg", ".m4a", ".opus", ".aac"}),
    "image": frozenset({".png", ".jpg", ".jpeg", ".webp"}),
    "text": frozenset({".txt"})}


@dataclass(frozen=True)
class SampleArrays:
    """One input as the shards would hold it; a modality the input does not have is None.

    `start` is where the window begins in the source, on the frame grid for a video (None for
    a picture or text), `fps` a video window's frame rate (that of the config it was read
    with); `notes` are things worth telling the user (a rounded start, a
    transcript that could not be read, a decoder complaint)."""

    source: str  # the input's path, or "<text>"
    start: float | None = None
    frames: np.ndarray | None = None  # (T, frame_size, frame_size, 3) uint8
    image: np.ndarray | None = None  # (image_size, image_size, 3) uint8
    mel: np.ndarray | None = None  # (n_mels, audio_frames) float16 log-mel, as `log_mel` makes it
    text: str | None = None
    notes: tuple[str, ...] = ()
    fps: int | None = None


def guess_modality(path: str | os.PathLike[str]) -> Modality:
    """The modality of an input file, from its extension (any case)."""
    suffix = Path(path).suffix.lower()
    for modality, extensions in MODALITY_EXTENSIONS.items():
        if suffix in extensions:
            return modality
    known = "; ".join(f"{modality} {' '.join(sorted(extensions))}"
                      for modality, extensions in MODALITY_EXTENSIONS.items())
    raise MediaError(f"cannot tell what {path} holds from its extension "
                     f"({suffix or 'none'}); known: {known}; name it with --from-modality")


def regular_input(path: str | os.PathLike[str], what: str) -> Path:
    """`path`, refused (MediaError) unless it is a regular file (symlinks followed): checked
    before anything opens it, since opening a FIFO blocks until a writer comes and opening a
    device may act on it. `what` names the kind of input in the message ("picture")."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError as err:
        raise MediaError(f"no such {what}: {path}") from err
    except OSError as err:
        raise MediaError(f"cannot read {what} {path}: {err.strerror or err}") from err
    if not stat.S_ISREG(mode):
        raise MediaError(f"{what} {path} is {file_kind(mode)}, not a regular file; not read")
    return path


def _open_regular(path: Path, what: str) -> BinaryIO:
    """`path` open for reading, checked as `regular_input` both before and after it is opened
    (non-blocking, so that a FIFO swapped in between cannot hang the open)."""
    regular_input(path, what)
    try:
        handle = open(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb")
    except OSError as err:
        raise MediaError(f"cannot read {what} {path}: {err.strerror or err}") from err
    mode = os.fstat(handle.fileno()).st_mode
    if not stat.S_ISREG(mode):
        handle.close()
        raise MediaError(f"{what} {path} is {file_kind(mode)}, not a regular file; not read")
    return handle


def load_input(path: str | os.PathLike[str], config: PrepareConfig,
               modality: Modality | None = None, start: float = 0.0, *,
               follow_symlinks: bool = False) -> SampleArrays:
    """`path` read as `modality` (guessed from the extension when None).

    `start` (seconds) picks the window of a video or an audio file; pictures and text have
    none, and a non-zero `start` for them is refused rather than ignored. `follow_symlinks`
    is `load_video_window`'s."""
    modality = guess_modality(path) if modality is None else modality
    if modality == "video":
        return load_video_window(path, config, start, follow_symlinks=follow_symlinks)
    if modality == "audio":
        return load_audio_file(path, config, start)
    if start:
        raise MediaError(f"{path}: a start time only applies to video and audio, not "
                         f"{modality}; drop --start")
    if modality == "image":
        return load_image_file(path, config)
    if modality == "text":
        return load_text_file(path)
    raise MediaError(f"unknown modality {modality!r}; use one of "
                     f"{', '.join(MODALITY_EXTENSIONS)}")


def has_video_stream(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds a video stream: an .mp4 of sound alone is read as audio when
    its sound is asked for. True for a file that cannot be opened, so that the video reader
    says why."""
    try:
        with open_container(Path(path)) as container:
            return bool(container.streams.video)
    except DecodeError:
        return True


def load_video_window(path: str | os.PathLike[str], config: PrepareConfig,
                      start: float = 0.0, *, follow_symlinks: bool = False) -> SampleArrays:
    """The clip window of a video that begins at `start` seconds (rounded to the frame grid),
    as `omni prepare` makes it.

    It is `window_from`'s, bit for bit prepare's window at that time. A start past the end is
    found by decoding to the end (container durations can be estimates, so they do not decide
    it)."""
    path = regular_input(path, "video")
    start, notes = _grid_start(path, start, config)
    try:
        info = probe(path)
    except DecodeError as err:
        raise MediaError(f"cannot read video {path}: {err}") from err
    probed = video_context(VideoSource(path, path.name, video_id(path.name)), info,
                           follow_symlinks=follow_symlinks)
    context, notes = probed.context, notes + probed.warnings
    if not info.has_audio:
        notes += ("the video has no audio stream: its mel is digital silence, as prepare "
                  "stores such videos",)
    stats = DecodeStats()
    try:
        window = window_from(path, config, start, stats)
    except DecodeError as err:
        raise MediaError(f"cannot decode video {path}: {err}") from err
    if window is None:
        raise MediaError(_past_end(path, start, stats.duration, config))
    if stats.first_error:
        notes += (f"decoder: {stats.first_error}",)
    fields = sample_fields(window, context, config)
    return SampleArrays(str(path), window.start, fields.frames, fields.image, fields.mel,
                        fields.text, notes, config.fps)


def _grid_start(path: Path, start: float, config: PrepareConfig) -> tuple[float, tuple[str, ...]]:
    """(seconds, notes) of the frame-grid time nearest `start`."""
    _check_start(path, start)
    seconds = round(start * config.fps) / config.fps
    notes: tuple[str, ...] = ()
    if abs(seconds - start) > 1e-9:
        notes = (f"start {start:g} s rounded to {seconds:g} s, the nearest frame of the "
                 f"{config.fps} fps grid",)
    return seconds, notes


def _check_start(path: Path, start: float) -> None:
    if not math.isfinite(start) or start < 0:
        raise MediaError(f"{path}: the start must be a time of 0 s or more, got {start}")


def _past_end(path: Path, start: float, duration: float | None, config: PrepareConfig) -> str:
    """Why no window starts at `start`, with the video's length and the latest start."""
    length = "of unknown length" if duration is None else f"{duration:.2f} s long"
    if duration is None or duration + END_TOLERANCE < config.clip_duration:
        return (f"{path}: no {config.clip_duration:g} s window starts at {start:g} s: the "
                f"video is {length}, shorter than one clip")
    latest = (grid_frames_within(duration, config) - config.video_frames) / config.fps
    return (f"{path}: the {config.clip_duration:g} s window from {start:g} s runs past the end "
            f"of the video ({length}); use a start of at most {latest:g} s")


def load_audio_file(path: str | os.PathLike[str], config: PrepareConfig,
                    start: float = 0.0) -> SampleArrays:
    """`config.clip_duration` of an audio file from `start` seconds, as a prepared log-mel.

    The first audio stream is decoded with PyAV, downmixed to mono and resampled to
    `config.sample_rate` by the PyAV backend's `MonoResampler`, and placed on the timeline by
    its `AudioBuffer` (time 0 is the container's start, as for a video); a clip that runs past
    the end is padded with silence, as prepare pads a video's. Decoding stops once the clip
    is complete and keeps at most about one clip of samples."""
    path = regular_input(path, "audio file")
    _check_start(path, start)
    try:
        container = open_container(path)
    except DecodeError as err:
        raise MediaError(f"cannot read audio from {path}: {err}") from err
    first = round(start * config.sample_rate)
    stop = first + config.samples_per_clip
    stats = DecodeStats()
    buffer = AudioBuffer(round(AUDIO_HARD_COMPENSATION_S * config.sample_rate))
    with container:
        if not container.streams.audio:
            raise MediaError(f"{path} has no audio stream; pass an audio file or a video with "
                             f"sound")
        stream = container.streams.audio[0]
        resampler = MonoResampler(config.sample_rate, origin(container))
        buffer.forget_before(first)  # keeps memory bounded however late `start` is
        try:
            for _, frame in decoded_frames(container, [stream], stats):
                for samples, position in resampler.resample(frame):
                    buffer.add(samples, position)
                if buffer.end >= stop:
                    break
            else:
                for samples, position in resampler.resample(None):
                    buffer.add(samples, position)
        except av.FFmpegError as err:
            raise MediaError(f"cannot decode audio from {path}: {err.strerror or err}") from err
    if not buffer.started:
        reason = f": {stats.first_error}" if stats.first_error else ""
        raise MediaError(f"{path}: no decodable audio{reason}")
    if buffer.end <= first:
        raise MediaError(f"{path}: the audio is {buffer.end / config.sample_rate:.2f} s long; "
                         f"a start of {start:g} s is past its end")
    samples = np.clip(buffer.take(first, config.samples_per_clip), -1.0, 1.0)  # (S,)
    notes = (f"decoder: {stats.first_error}",) if stats.first_error else ()
    return SampleArrays(str(path), first / config.sample_rate, mel=log_mel(samples, config),
                        notes=notes)


def load_image_file(path: str | os.PathLike[str], config: PrepareConfig) -> SampleArrays:
    """A picture as the clip image prepare would make of it: upright (EXIF orientation), RGB,
    then `still_image`. Animated files give their first frame.

    Its stated size is checked against MAX_FRAME_BYTES before it is decoded: Pillow's own
    guard stops only above 179 megapixels, and a 200 kB PNG may state 13300x13300."""
    path = Path(path)
    try:
        with _open_regular(path, "picture") as handle:
            with warnings.catch_warnings():
                # Pillow warns of pictures above 89 megapixels on opening them; the size check
                # below refuses them, and smaller ones, itself.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                picture = Image.open(handle)
            with picture:
                _check_picture_size(path, picture)
                rgb = np.asarray(ImageOps.exif_transpose(picture).convert("RGB"))  # (H, W, 3)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError) as err:
        raise MediaError(f"cannot read picture {path}: {err}") from err
    return SampleArrays(str(path), image=still_image(rgb, config.image_size))


def _check_picture_size(path: Path, picture: Image.Image) -> None:
    """Raise `MediaError` if the picture, decoded in its own mode or as the 8-bit RGB it becomes,
    would take more than MAX_FRAME_BYTES."""
    mode = ImageMode.getmode(picture.mode)
    pixel_bytes = len(mode.bands) * np.dtype(mode.typestr).itemsize
    problem = frame_size_problem(*picture.size, 8 * max(3, pixel_bytes), f"{picture.mode} picture")
    if problem is not None:
        raise MediaError(f"cannot read picture {path}: {problem}")


def still_image(rgb: np.ndarray, image_size: int) -> np.ndarray:
    """A (H, W, 3) uint8 RGB picture as a clip image: (image_size, image_size, 3) uint8.

    The PyAV backend's own steps for a frame with square pixels and no rotation: libswscale
    bilinear to `scaled_size` (`scale_to_rgb`), then `display_image`'s centre crop."""
    height, width = rgb.shape[:2]
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    scaled = scale_to_rgb(frame, scaled_size(width, height, image_size),
                          VideoReformatter())  # (h, w, 3)
    return display_image(scaled, 0, image_size)  # (S, S, 3)


def load_text_file(path: str | os.PathLike[str]) -> SampleArrays:
    """The text of a file (encoding detected as for transcripts) as `text_input` makes it."""
    path = regular_input(path, "text file")
    return replace(text_input(read_text_file(path)), source=str(path))


def text_input(text: str) -> SampleArrays:
    """Text as the transcript windows of the shards hold it: words joined by single spaces."""
    return SampleArrays("<text>", text=" ".join(text.split()))


def sample_arrays_batch(arrays: SampleArrays, tokenizer: TokenizerFn = byte_tokenizer,
                        max_text_len: int = 128) -> Batch:
    """A batch of one in the loader's format and dtypes, with only the input's modalities
    (`video` (1, T, 3F/2, F) I420 (`loader_clip`) and `image` (1, S, S, 3) uint8, `audio`
    (1, M, T_mel) float16, `text` (1, L))."""
    frames = arrays.frames
    if frames is not None:
        if arrays.fps is None:
            raise MediaError(f"{arrays.source}: a video window needs its frame rate (fps)")
        frames = loader_clip(frames, arrays.fps)
    tensors = sample_tensors(frames, arrays.image, arrays.mel, arrays.text,
                             tokenizer=tokenizer, max_text_len=max_text_len, key=arrays.source,
                             meta={"source": arrays.source, "start": arrays.start})
    return collate([tensors])


def loader_clip(frames: np.ndarray, fps: int) -> np.ndarray:
    """A window's frames (T, F, F, 3) uint8 as the shard loader gives them to the model: the
    mp4 clip `omni prepare` stores (`encode_clip`, at the config's `fps`) decoded into an I420
    slot, (T, 3F/2, F) (`decode_member`), so generating sees training's units. Odd-sized
    frames, which prepare can only store as npy, stay RGB as the loader gives npy clips."""
    count, size = frames.shape[:2]  # square, as prepare makes them
    if size % 2:
        return frames
    clip: np.ndarray = decode_member(CLIP_PREFIX + "mp4", encode_clip(frames, "mp4", fps),
                                     {"video_frames": count, "video_size": size},
                                     out=np.empty(i420_shape(count, size, size), np.uint8))
    return clip
