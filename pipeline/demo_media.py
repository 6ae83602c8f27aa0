"""Sample footage for the demo and for trying the pipeline without videos of your own.

Each video is a sequence of "scenes" (a coloured shape moving over a tinted background) with a
tone whose pitch belongs to the scene, and a transcript naming the scene while it is on
screen. Picture, sound and text therefore agree with each other in time, which gives the
cross-modal tasks something real to learn. Transcripts come as .srt, .vtt and untimed .txt
sidecars (and one video has none) so every transcript path of `omni prepare` is exercised.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from pipeline.errors import PipelineError

# (name, RGB colour, tone in Hz): a scene's picture, sound and words all derive from it.
SCENES = (
    ("red circle", (220, 40, 40), 330.0),
    ("green square", (40, 180, 60), 440.0),
    ("blue triangle", (50, 80, 220), 550.0),
    ("yellow star", (230, 200, 40), 660.0),
    ("purple wave", (150, 60, 190), 770.0),
)
SCENE_SECONDS = 1.5


@dataclass(frozen=True)
class DemoVideo:
    path: Path
    transcript: Path | None
    duration: float


def encode_video(
    path: Path,
    duration: float,
    picture: Callable[[float], np.ndarray],
    sound: Callable[[np.ndarray], np.ndarray] | None,
    fps: int = 24,
    size: tuple[int, int] = (320, 240),
    sample_rate: int = 16000,
) -> None:
    """Write an H.264 (+ AAC when ``sound`` is given) file. ``picture(t)`` returns an
    (H, W, 3) uint8 frame; ``sound(times)`` returns mono float32 samples in [-1, 1]."""
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    width, height = size
    with av.open(str(path), mode="w") as container:
        video = container.add_stream(codec, rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        audio = None
        if sound is not None:
            audio = container.add_stream("aac", rate=sample_rate, layout="mono")
        n_frames = round(duration * fps)
        samples_per_frame = sample_rate // fps
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(picture(i / fps), format="rgb24")
            frame.pts = i
            container.mux(video.encode(frame))
            if audio is not None:
                start = i * samples_per_frame
                times = (start + np.arange(samples_per_frame)) / sample_rate
                chunk = av.AudioFrame.from_ndarray(sound(times)[None, :].astype(np.float32),
                                                   format="fltp", layout="mono")
                chunk.sample_rate, chunk.pts = sample_rate, start
                chunk.time_base = Fraction(1, sample_rate)
                container.mux(audio.encode(chunk))
        container.mux(video.encode(None))
        if audio is not None:
            container.mux(audio.encode(None))


def _scene_at(order: list[int], t: float) -> int:
    return order[min(int(t // SCENE_SECONDS), len(order) - 1)]


def _picture(order: list[int], size: tuple[int, int]) -> Callable[[float], np.ndarray]:
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width]

    def draw(t: float) -> np.ndarray:
        name, colour, _ = SCENES[_scene_at(order, t)]
        frame = np.empty((height, width, 3), dtype=np.uint8)  # (H, W, 3)
        frame[:] = np.array(colour) // 4 + 30
        cx = width * (0.2 + 0.6 * ((t / SCENE_SECONDS) % 1.0))
        cy = height * (0.5 + 0.25 * np.sin(2 * np.pi * t / 3))
        radius = height / 5
        if "square" in name:
            mask = (abs(xx - cx) < radius) & (abs(yy - cy) < radius)
        elif "triangle" in name:
            mask = (yy - cy > -radius) & (abs(xx - cx) < (yy - cy + radius) / 2)
        else:
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 < radius**2
        frame[mask] = colour
        return frame

    return draw


def _sound(order: list[int]) -> Callable[[np.ndarray], np.ndarray]:
    def tone(times: np.ndarray) -> np.ndarray:
        scene = np.minimum((times // SCENE_SECONDS).astype(int), len(order) - 1)
        hz = np.array([SCENES[order[s]][2] for s in scene])
        envelope = np.minimum(1.0, 10 * (times % SCENE_SECONDS))  # soft onset per scene
        return (0.4 * envelope * np.sin(2 * np.pi * hz * times)).astype(np.float32)

    return tone


def _timestamp(seconds: float, sep: str) -> str:
    ms = round(seconds * 1000)
    hours, minutes, secs = ms // 3_600_000, ms // 60_000 % 60, ms // 1000 % 60
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{sep}{ms % 1000:03d}"


def _write_transcript(path: Path, order: list[int], kind: str) -> None:
    cues = [(i * SCENE_SECONDS, (i + 1) * SCENE_SECONDS, f"a {SCENES[s][0]}")
            for i, s in enumerate(order)]
    if kind == "srt":
        text = "".join(f"{i + 1}\n{_timestamp(a, ',')} --> {_timestamp(b, ',')}\n{words}\n\n"
                       for i, (a, b, words) in enumerate(cues))
    elif kind == "vtt":
        text = "WEBVTT\n\n" + "".join(
            f"{_timestamp(a, '.')} --> {_timestamp(b, '.')}\n{words}\n\n" for a, b, words in cues)
    else:
        text = " ".join(words for _, _, words in cues) + "\n"
    path.write_text(text, encoding="utf-8")


def make_demo_videos(out_dir: Path, count: int = 4, scenes_per_video: int = 4,
                     seed: int = 0) -> list[DemoVideo]:
    """Write ``count`` short videos (``scenes_per_video`` × 1.5 s each) with transcripts:
    the i-th uses .srt, .vtt, .txt, none, in turn."""
    if count <= 0 or scenes_per_video <= 0:
        raise PipelineError("count and scenes_per_video must be > 0")
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    kinds = ("srt", "vtt", "txt", None)
    videos = []
    for i in range(count):
        order = [int(s) for s in rng.integers(0, len(SCENES), scenes_per_video)]
        duration = scenes_per_video * SCENE_SECONDS
        path = out_dir / f"demo_{i:02d}.mp4"
        encode_video(path, duration, _picture(order, (320, 240)), _sound(order))
        kind = kinds[i % len(kinds)]
        transcript = None
        if kind is not None:
            transcript = path.with_suffix(f".{kind}")
            _write_transcript(transcript, order, kind)
        videos.append(DemoVideo(path, transcript, duration))
    return videos
