"""A small learnable world of sample videos, for the demo and for trying the pipeline (what it
shows and sounds like: README.md, "The demo world").

Within a class every video differs, so a model has to learn the class, not memorise footage.
Everything a video shows follows from `demo_params(seed, index)`; rendering is pure numpy,
vectorised over frames and samples, so a 4 s video takes a small fraction of a second."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path, PurePath

import av
import numpy as np

from pipeline.errors import PipelineError
from pipeline.media.h264 import x264_options

SIZE = (160, 120)  # (width, height): small, so encoding and decoding stay fast
FPS = 16  # a multiple of the 8 fps clip grid of `omni prepare`: no frame is picked twice
SAMPLE_RATE = 16000
MAX_DURATION = 600.0  # seconds: longer teaches nothing more, and catches "4000" for "4"
_FRAMES_PER_BLOCK = 32  # frames rendered at once: bounds memory for long videos
_AUDIO_CHUNK = 1024  # samples per AAC frame
_NOISE_FLOOR = 0.01  # background hiss, -40 dB below full scale


@dataclass(frozen=True)
class DemoClass:
    """One class of the demo world: what its videos show, sound like and say.

    `hz` is the base frequency of the sound (the pips of "clicks" too); a video's pitch
    jitter scales it."""

    name: str
    colour: tuple[int, int, int]
    shape: str
    sound: str
    hz: float
    sentence: str

    @property
    def slug(self) -> str:
        """The class in file names: "red circle" -> "red-circle"."""
        return self.name.replace(" ", "-")


# Colours at the corners of the RGB cube and sounds in bands of their own (110 Hz to 6.5 kHz,
# each at least ~1.4x above the last): any two classes differ by a whole colour channel and a
# whole stretch of the mel scale, so a prediction that knows the class can tell it apart.
DEMO_CLASSES = (
    DemoClass("red circle", (230, 30, 30), "circle", "hums", 110.0, "the red circle hums"),
    DemoClass("green square", (30, 210, 50), "square", "beeps", 1600.0, "the green square beeps"),
    DemoClass("blue triangle", (40, 60, 240), "triangle", "buzzes", 3300.0,
              "the blue triangle buzzes"),
    DemoClass("yellow star", (240, 230, 30), "star", "whistles", 2400.0,
              "the yellow star whistles"),
    DemoClass("purple ring", (200, 40, 220), "ring", "chirps", 4200.0, "the purple ring chirps"),
    DemoClass("black cross", (15, 15, 15), "cross", "rings", 1100.0, "the black cross rings"),
    DemoClass("cyan diamond", (30, 220, 230), "diamond", "clicks", 6500.0,
              "the cyan diamond clicks"),
    DemoClass("white bar", (245, 245, 245), "bar", "drones", 500.0, "the white bar drones"))
_BY_SLUG = {demo_class.slug: demo_class for demo_class in DEMO_CLASSES}
_FILE_NAME = re.compile(r"(?P<slug>[a-z]+-[a-z]+)_s(?P<seed>\d+)_(?P<index>\d+)\.[A-Za-z0-9]+")


@dataclass(frozen=True)
class DemoParams:
    """Everything random about one video; rendering is a pure function of these.

    Lengths are in pixels of the `SIZE` picture, times in seconds, levels in 0-255."""

    demo_class: DemoClass
    colour: tuple[int, int, int]  # the class colour, jittered by up to 10 per channel
    radius: float  # half the shape's extent: 1/4 to 1/2.8 of the picture height
    start: tuple[float, float]  # shape centre (x, y) at t = 0
    velocity: tuple[float, float]  # pixels per second; the shape bounces off the edges
    background: float  # mean grey level of the noise background
    noise: float  # standard deviation of the background's grey level
    pitch: float  # frequency factor, 0.97-1.03
    loudness: float  # peak amplitude of the sound, 0.25-0.6
    phase: float  # oscillator phase, radians
    onset: float  # offset of repeating sound events (beeps, chirps, rings, clicks), seconds
    noise_seed: int  # seeds the picture and sound noise


@dataclass(frozen=True)
class DemoVideo:
    """One written video, its transcript sidecar (None: it has none) and its class."""

    path: Path
    transcript: Path | None
    duration: float
    class_name: str
    fps: int = FPS
    has_audio: bool = True
    kind: str = "complete"  # one of REALISTIC_KINDS


# The gaps of real video, in turn by index (5 is prime to the 8 classes, so 40 videos give
# every class every kind): a transcript spoken throughout, none at all (no sidecar), speech
# over part of the video only (windows away from it have no text), no audio stream.
REALISTIC_KINDS = ("complete", "no transcript", "speech gaps", "no audio", "speech gaps")
REALISTIC_FPS = (12, 16, 24, 25, 30)


@dataclass(frozen=True)
class VideoGaps:
    """How one video of a realistic world departs from the demo world's."""

    kind: str
    duration: float
    fps: int
    audio: bool
    cues: tuple[tuple[float, float], ...]  # when the sentence is spoken; empty: no transcript


def realistic_gaps(seed: int, index: int, duration: float) -> VideoGaps:
    """The gaps of video `index` of a realistic world: its kind is `REALISTIC_KINDS` in turn;
    length (0.75x to 1.5x `duration`, at least 2 s: one clip) and frame rate are drawn from a
    stream of its own, so the class, picture and sound are those of the demo world's video."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index, 1)))
    kind = REALISTIC_KINDS[index % len(REALISTIC_KINDS)]
    length = round(float(np.clip(duration * rng.uniform(0.75, 1.5), 2.0, MAX_DURATION)), 2)
    fps = int(rng.choice(REALISTIC_FPS))
    cues: tuple[tuple[float, float], ...] = ((0.0, length),)
    if kind == "no transcript":
        cues = ()
    elif kind == "speech gaps":  # spoken for 30-50 % of it, at the start or the end
        spoken = round(length * rng.uniform(0.3, 0.5), 2)
        cues = ((0.0, spoken),) if rng.random() < 0.5 else ((round(length - spoken, 2), length),)
    return VideoGaps(kind, length, fps, kind != "no audio", cues)


def class_order(seed: int) -> tuple[DemoClass, ...]:
    """The seeded permutation of `DEMO_CLASSES`: video i gets class `order[i % 8]`."""
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    return tuple(DEMO_CLASSES[i] for i in rng.permutation(len(DEMO_CLASSES)))


def demo_params(seed: int, index: int) -> DemoParams:
    """The class and random variation of video `index` of the set made with `seed`.

    Each video draws from its own stream (a child of the seed keyed by `index`), so a video's
    parameters do not depend on how many videos the set holds."""
    if seed < 0 or index < 0:
        raise PipelineError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    demo_class = class_order(seed)[index % len(DEMO_CLASSES)]
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))
    width, height = SIZE
    radius = height * rng.uniform(1 / 4, 1 / 2.8)
    speed = rng.uniform(15.0, 60.0)
    angle = rng.uniform(0, 2 * math.pi)
    red, green, blue = (int(c) for c in np.clip(demo_class.colour + rng.integers(-10, 11, 3),
                                                0, 255))
    return DemoParams(  # the draws below, in this order, are part of every seed's videos
        demo_class=demo_class, colour=(red, green, blue), radius=float(radius),
        start=(float(rng.uniform(radius, width - radius)),
               float(rng.uniform(radius, height - radius))),
        velocity=(speed * math.cos(angle), speed * math.sin(angle)),
        background=float(rng.uniform(85.0, 135.0)), noise=float(rng.uniform(5.0, 15.0)),
        pitch=float(rng.uniform(0.97, 1.03)), loudness=float(rng.uniform(0.25, 0.6)),
        phase=float(rng.uniform(0, 2 * math.pi)), onset=float(rng.uniform(0, 1.0)),
        noise_seed=int(rng.integers(2**63)))


def demo_file_stem(params: DemoParams, seed: int, index: int) -> str:
    """"red-circle_s0_007": class, seed and index; `demo_class_of` reads it back."""
    return f"{params.demo_class.slug}_s{seed}_{index:03d}"


def demo_class_of(path: str | os.PathLike[str]) -> DemoClass | None:
    """The class of a demo video from its path or a prepared sample's `source` (any folder
    prefix, any extension); None when the name is not a demo video's."""
    match = _FILE_NAME.fullmatch(PurePath(path).name)
    return _BY_SLUG.get(match["slug"]) if match else None


def shape_centres(params: DemoParams, times: np.ndarray) -> np.ndarray:
    """Shape centre (x, y) at each of `times`: (T, 2). A straight path that bounces off the
    picture's edges (folded back into [radius, side - radius])."""
    lows = np.array([params.radius, params.radius])  # (2,)
    spans = np.array(SIZE) - 2 * params.radius  # (2,) free travel per axis
    travel = np.array(params.start) - lows + times[:, None] * np.array(params.velocity)  # (T, 2)
    folded = np.mod(travel, 2 * spans)  # (T, 2) position on a there-and-back loop
    return lows + np.where(folded > spans, 2 * spans - folded, folded)  # (T, 2)


def _inside_star(u: np.ndarray, v: np.ndarray, inner: float = 0.55) -> np.ndarray:
    """Points (u, v), in units of the outer radius, inside a 5-point star with a point up."""
    rho = np.hypot(u, v)
    sector = 2 * math.pi / 5
    # Fold the angle into one half-point: 0 at an inner corner, sector/2 at a tip.
    alpha = np.abs(np.mod(np.arctan2(u, -v), sector) - sector / 2)
    x, y = rho * np.cos(alpha), rho * np.sin(alpha)
    # Inside when on the origin's side of the edge from the inner corner to the tip.
    dx, dy = math.cos(sector / 2) - inner, math.sin(sector / 2)
    return dx * y - dy * (x - inner) >= 0


# Points (u, v), in units of the radius around the centre (v pointing down), inside each
# shape; each shape fills most of the [-1, 1] square.
_INSIDE: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "circle": lambda u, v: u**2 + v**2 <= 1,
    "square": lambda u, v: np.maximum(np.abs(u), np.abs(v)) <= 0.8,
    "triangle": lambda u, v: (v <= 0.8) & (np.abs(u) <= (v + 1) / 1.8),
    "star": _inside_star,
    "ring": lambda u, v: (u**2 + v**2 <= 1) & (u**2 + v**2 >= 0.55**2),
    "cross": lambda u, v: (((np.abs(u) <= 0.35) & (np.abs(v) <= 1))
                           | ((np.abs(v) <= 0.35) & (np.abs(u) <= 1))),
    "diamond": lambda u, v: np.abs(u) + np.abs(v) <= 1,
    "bar": lambda u, v: (np.abs(u) <= 1) & (np.abs(v) <= 0.5)}


def shape_mask(params: DemoParams, frames: np.ndarray, fps: int = FPS) -> np.ndarray:
    """Where the shape is in each of the `frames` (indices at `fps`): bool (T, H, W).

    Only a box around the shape is tested (the star's trigonometry over whole frames would
    cost more than encoding them)."""
    width, height = SIZE
    centres = shape_centres(params, frames / fps)  # (T, 2)
    side = math.ceil(2 * params.radius) + 2
    origins = np.maximum(np.floor(centres - params.radius).astype(int), 0)  # (T, 2) box corner
    pixels = origins[:, :, None] + np.arange(side) + 0.5  # (T, 2, S) pixel centres in the box
    offsets = (pixels - centres[:, :, None]) / params.radius  # (T, 2, S)
    u, v = offsets[:, 0, None, :], offsets[:, 1, :, None]  # (T, 1, S), (T, S, 1)
    inside = _INSIDE[params.demo_class.shape](u, v)  # (T, S, S)
    mask = np.zeros((len(frames), height, width), dtype=bool)  # (T, H, W)
    for frame_mask, (x, y), box in zip(mask, origins, inside, strict=True):
        region = frame_mask[y : y + side, x : x + side]  # cut at the right and bottom edges
        region[:] = box[: region.shape[0], : region.shape[1]]
    return mask


def _yuv(rgb: tuple[int, int, int]) -> tuple[float, float, float]:
    """BT.601 limited-range Y, Cb, Cr of an RGB colour, as decoders assume for this video."""
    r, g, b = rgb
    return (16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255,
            128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255,
            128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255)


def render_frames(params: DemoParams, frames: np.ndarray, fps: int = FPS) -> np.ndarray:
    """The pictures of the `frames` (indices at `fps`), as yuv420p planes stacked the way
    PyAV's `VideoFrame.from_ndarray` takes them: uint8 (T, H * 3 / 2, W).

    Grey-level noise in 2x2 pixel blocks, new in every frame (seeded per frame, so any frame
    renders alone), under the shape in its colour. Drawing in YUV skips an RGB conversion
    that costs as much as the encoding; blocks, rather than single pixels, survive the
    encoder's quantisation at a quarter of the bits."""
    width, height = SIZE
    noise = np.empty((len(frames), height // 2, width // 2), dtype=np.float32)  # (T, H/2, W/2)
    for i, frame in enumerate(frames):
        rng = np.random.default_rng([params.noise_seed, int(frame)])
        noise[i] = rng.standard_normal((height // 2, width // 2), dtype=np.float32)
    grey = np.clip(params.background + params.noise * noise, 0, 255)  # (T, H/2, W/2)
    luma = np.round(16 + 219 / 255 * grey).astype(np.uint8)  # (T, H/2, W/2) limited range
    luma = luma.repeat(2, axis=1).repeat(2, axis=2)  # (T, H, W)
    mask = shape_mask(params, frames, fps)  # (T, H, W)
    y, cb, cr = _yuv(params.colour)
    luma[mask] = round(y)  # (T, H, W)
    # Chroma is at half resolution: a 2x2 block takes the shape's share of its pixels.
    cover = (mask[:, 0::2, 0::2].astype(np.uint8) + mask[:, 0::2, 1::2] + mask[:, 1::2, 0::2]
             + mask[:, 1::2, 1::2])  # (T, H/2, W/2) shape pixels per block, 0-4
    chroma = [np.round(128 + np.arange(5) / 4 * (c - 128)).astype(np.uint8)[cover]
              for c in (cb, cr)]  # 2 x (T, H/2, W/2): pixel count -> Cb, Cr by lookup
    # Each (H/2, W/2) chroma plane fills H/4 rows of W in PyAV's stacked layout.
    planes = [plane.reshape(len(frames), height // 4, width) for plane in chroma]
    return np.concatenate([luma, *planes], axis=1)  # (T, H * 3 / 2, W)


def _periodic(t: np.ndarray, period: float, onset: float) -> np.ndarray:
    """Seconds since the latest event of a train that repeats every `period` from `onset`."""
    return np.mod(t - onset, period)


def _ramp(tau: np.ndarray, length: float, seconds: float) -> np.ndarray:
    """1 inside [0, length), rising and falling linearly over `seconds` at either end."""
    return np.clip(np.minimum(tau, length - tau) / seconds, 0, 1)


def _synth(params: DemoParams, t: np.ndarray) -> np.ndarray:
    """The class's sound at times `t` (N,), before loudness and hiss: (N,)."""
    kind, hz = params.demo_class.sound, params.demo_class.hz * params.pitch
    phase, onset = params.phase, params.onset
    if kind == "hums":  # a low tone with two falling harmonics
        return sum(a * np.sin(2 * math.pi * k * hz * t + k * phase)
                   for k, a in enumerate((1.0, 0.5, 0.3), start=1))
    if kind == "beeps":  # a tone switched on and off four times a second
        gate = _ramp(_periodic(t, 0.25, onset), 0.125, 0.005)
        return gate * np.sin(2 * math.pi * hz * t + phase)
    if kind == "buzzes":  # a tone with a deep 40 Hz tremolo
        return (0.6 + 0.4 * np.sin(2 * math.pi * 40 * t + onset)) * np.sin(
            2 * math.pi * hz * t + phase)
    if kind == "whistles":  # a high tone with a 2 % vibrato at 5.5 Hz
        rate, depth = 5.5, 0.02
        return np.sin(2 * math.pi * hz * t + depth * hz / rate * np.sin(2 * math.pi * rate * t)
                      + phase)
    if kind == "chirps":  # 0.3 s linear sweeps hz -> 1.25 * hz, every 0.5 s
        sweep = 0.3
        tau = _periodic(t, 0.5, onset)
        swept = 2 * math.pi * (hz * tau + (0.25 * hz) * tau**2 / (2 * sweep))
        return _ramp(tau, sweep, 0.01) * np.sin(swept + phase)
    if kind == "rings":  # a struck bell: a decaying tone and a faint partial, every 0.7 s
        tau = _periodic(t, 0.7, onset)
        envelope = np.exp(-tau / 0.25) * np.clip(tau / 0.002, 0, 1)
        return envelope * (np.sin(2 * math.pi * hz * tau + phase)
                           + 0.2 * np.sin(2 * math.pi * 1.5 * hz * tau + phase))
    if kind == "clicks":  # 10 short tone pips a second
        tau = _periodic(t, 0.1, onset)
        return _ramp(tau, 0.012, 0.002) * np.sin(2 * math.pi * hz * t + phase)
    if kind == "drones":  # a steady fifth, hz and 1.5 * hz
        return (np.sin(2 * math.pi * hz * t + phase)
                + 0.8 * np.sin(2 * math.pi * 1.5 * hz * t + 2 * phase))
    raise PipelineError(f"unknown demo sound {kind!r}")


def render_sound(params: DemoParams, duration: float) -> np.ndarray:
    """`duration` seconds of the video's sound at `SAMPLE_RATE`: float32 (N,) in [-1, 1],
    the class's sound peaking at `params.loudness`, over a -40 dB hiss."""
    rng = np.random.default_rng([params.noise_seed, 1 << 32])  # apart from frame seeds
    t = np.arange(round(duration * SAMPLE_RATE)) / SAMPLE_RATE  # (N,)
    sound = _synth(params, t)  # (N,)
    sound = params.loudness * sound / max(float(np.abs(sound).max()), 1e-9)
    # Fade in and out over 0.1 s: on a sudden start the AAC encoder's first frames overshoot
    # (peaks of 0.9 for 0.55 at 48 kbit/s).
    sound *= _ramp(t, duration, 0.1)
    hiss = _NOISE_FLOOR * rng.standard_normal(len(t))  # (N,)
    return np.clip(sound + hiss, -1, 1).astype(np.float32)


def _timestamp(seconds: float, sep: str) -> str:
    ms = round(seconds * 1000)
    hours, minutes, secs = ms // 3_600_000, ms // 60_000 % 60, ms // 1000 % 60
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{sep}{ms % 1000:03d}"


def write_srt(path: Path, cues: list[tuple[float, float, str]]) -> None:
    """Write (start, end, text) cues as SubRip."""
    text = "".join(f"{i + 1}\n{_timestamp(a, ',')} --> {_timestamp(b, ',')}\n{words}\n\n"
                   for i, (a, b, words) in enumerate(cues))
    path.write_text(text, encoding="utf-8")


def write_vtt(path: Path, cues: list[tuple[float, float, str]]) -> None:
    """Write (start, end, text) cues as WebVTT."""
    text = "WEBVTT\n\n" + "".join(f"{_timestamp(a, '.')} --> {_timestamp(b, '.')}\n{words}\n\n"
                                  for a, b, words in cues)
    path.write_text(text, encoding="utf-8")


def encode_video(path: Path, params: DemoParams, duration: float, fps: int = FPS,
                 audio: bool = True) -> None:
    """Write the video of `params` as H.264 (libx264 if PyAV has it, else MPEG-4 part 2)
    yuv420p at `fps` with mono AAC at `SAMPLE_RATE` (no audio stream at all without `audio`).

    One encoder thread: the pictures are tiny, so threads cost more than they save, and the
    output stays byte-identical run to run. Noise is costly to code and nothing needs it
    exact: x264's "ultrafast" preset at CRF 33 keeps the grain in a quarter of the CPU time
    that "veryfast" takes, at about the same size (~65 KB per 4 s)."""
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    width, height = SIZE
    n_frames = round(duration * fps)
    sound = render_sound(params, duration)  # (N,)
    with av.open(str(path), mode="w", format="mp4") as container:
        video = container.add_stream(codec, rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.codec_context.time_base = Fraction(1, fps)
        video.thread_count = 1
        if codec == "libx264":
            video.options = dict(x264_options(33, "ultrafast"))
        else:
            video.bit_rate = 400_000
        stream = None
        if audio:
            stream = container.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
            stream.bit_rate = 48_000
        audio_pos = 0
        for first in range(0, n_frames, _FRAMES_PER_BLOCK):
            frames = np.arange(first, min(first + _FRAMES_PER_BLOCK, n_frames))
            for index, planes in zip(frames, render_frames(params, frames, fps), strict=True):
                frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
                frame.pts = int(index)
                container.mux(video.encode(frame))
            # Interleave: audio up to the end of this block of pictures (all of it after the
            # last block, also when `duration` is not a whole number of frames).
            end = frames[-1] + 1
            until = len(sound) if end == n_frames else round(end / fps * SAMPLE_RATE)
            if stream is None:
                continue
            for start in range(audio_pos, until, _AUDIO_CHUNK):
                chunk = sound[start:min(start + _AUDIO_CHUNK, until)]
                samples = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
                samples.sample_rate, samples.pts = SAMPLE_RATE, start
                samples.time_base = Fraction(1, SAMPLE_RATE)
                container.mux(stream.encode(samples))
            audio_pos = until
        container.mux(video.encode(None))
        if stream is not None:
            container.mux(stream.encode(None))


def make_demo_videos(out_dir: Path, count: int = 16, seed: int = 0, duration: float = 4.0,
                     on_video: Callable[[DemoVideo], None] | None = None,
                     realistic: bool = False) -> list[DemoVideo]:
    """Write `count` videos of `duration` seconds into `out_dir` (created if missing), with
    one transcript cue spanning each: .srt for even indices, .vtt for odd ones.

    `realistic` gives the world the gaps of real video (`realistic_gaps`): videos without a
    transcript or without an audio stream, speech that covers only part of a video, lengths
    and frame rates that vary.

    Video i is of class `class_order(seed)[i % 8]`, so the classes are balanced; its name is
    `demo_file_stem` (files of the same name are replaced). Each video is written under a
    temporary name and renamed when complete, after its transcript, so a folder never holds
    a partial video. `on_video` is called after each one (for progress displays)."""
    if count < 1:
        raise PipelineError(f"count must be >= 1, got {count}")
    if seed < 0:
        raise PipelineError(f"seed must be >= 0, got {seed}")
    if not 1.0 <= duration <= MAX_DURATION:
        raise PipelineError(f"duration must lie in [1, {MAX_DURATION:g}] seconds, "
                            f"got {duration}")
    videos = []
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            params = demo_params(seed, index)
            gaps = (realistic_gaps(seed, index, duration) if realistic
                    else VideoGaps("complete", duration, FPS, True, ((0.0, duration),)))
            path = out_dir / f"{demo_file_stem(params, seed, index)}.mp4"
            writer, suffix = (write_srt, ".srt") if index % 2 == 0 else (write_vtt, ".vtt")
            transcript = path.with_suffix(suffix) if gaps.cues else None
            for stale in (path.with_suffix(".srt"), path.with_suffix(".vtt")):
                stale.unlink(missing_ok=True)  # a rewrite must not keep an old transcript
            if transcript is not None:
                writer(transcript, [(a, b, params.demo_class.sentence) for a, b in gaps.cues])
            partial = path.with_name(f".{path.stem}.partial.mp4")
            encode_video(partial, params, gaps.duration, gaps.fps, gaps.audio)
            partial.replace(path)
            video = DemoVideo(path, transcript, gaps.duration, params.demo_class.name,
                              gaps.fps, gaps.audio, gaps.kind)
            videos.append(video)
            if on_video is not None:
                on_video(video)
    except OSError as err:
        raise PipelineError(f"cannot write demo videos into {out_dir}: "
                            f"{err.strerror or err}") from err
    return videos
