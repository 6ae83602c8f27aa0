"""`pipeline.demo_media` and `omni demo-videos`: the sample world is balanced, seeded, and its
picture, sound and transcript show the class after encoding, decoding and `omni prepare`."""

from __future__ import annotations

import json
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest
from typer.testing import CliRunner

from cli.app import app
from pipeline.config import PrepareConfig
from pipeline.demo_media import (
    DEMO_CLASSES,
    FPS,
    SAMPLE_RATE,
    DemoClass,
    DemoVideo,
    class_order,
    demo_class_of,
    demo_file_stem,
    demo_params,
    make_demo_videos,
    render_frames,
    render_sound,
    shape_mask,
)
from pipeline.errors import PipelineError
from pipeline.media.audio import log_mel
from pipeline.media.subtitles import load_sidecar
from pipeline.prepare.run import RunOptions, prepare

SEED = 5
DURATION = 3.0
runner = CliRunner()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, DemoVideo]:
    """One 3 s video of each class, by sound ("hums", "whistles", ...)."""
    videos = make_demo_videos(tmp_path_factory.mktemp("world"), count=8, seed=SEED,
                              duration=DURATION)
    return {demo_class_of(video.path).sound: video for video in videos}


def _index(video: DemoVideo) -> int:
    return int(video.path.stem.rsplit("_", 1)[1])


def _decode(path: Path) -> tuple[list[np.ndarray], np.ndarray]:
    """RGB frames (H, W, 3) in presentation order and mono samples (N,)."""
    with av.open(str(path)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
        container.seek(0)
        audio = [frame.to_ndarray().reshape(-1) for frame in container.decode(audio=0)]
    return frames, np.concatenate(audio)


def _grow(mask: np.ndarray, pixels: int) -> np.ndarray:
    """`mask` dilated by a (2 * pixels + 1) square."""
    height, width = mask.shape
    padded = np.pad(mask, pixels)
    grown = np.zeros_like(mask)
    for dy in range(2 * pixels + 1):
        for dx in range(2 * pixels + 1):
            grown |= padded[dy : dy + height, dx : dx + width]
    return grown


def test_classes_are_balanced_and_file_names_give_the_class_back() -> None:
    assert sorted(c.name for c in class_order(0)) == sorted(c.name for c in DEMO_CLASSES)
    assert len({c.colour for c in DEMO_CLASSES}) == len({c.shape for c in DEMO_CLASSES}) == 8
    params = [demo_params(0, index) for index in range(32)]
    assert set(Counter(p.demo_class.name for p in params).values()) == {4}
    stem = demo_file_stem(params[7], 0, 7)
    assert stem == f"{params[7].demo_class.slug}_s0_007"
    for where in (f"{stem}.mp4", f"/data/world/train/{stem}.mp4", f"sub dir/{stem}.vtt"):
        assert demo_class_of(where) is params[7].demo_class, where
        assert demo_class_of(Path(where)) is params[7].demo_class, where
    for other in ("clip.mp4", "red-circle.mp4", "pink-blob_s0_001.mp4", "red-circle_s0_.mp4",
                  "red-circle_s0_007.mp4/extra"):
        assert demo_class_of(other) is None, other


def test_same_seed_repeats_every_video_another_seed_differs() -> None:
    assert class_order(3) == class_order(3)
    assert [demo_params(3, i) for i in range(8)] == [demo_params(3, i) for i in range(8)]
    params = demo_params(3, 5)
    frames = np.arange(4)
    assert np.array_equal(render_frames(params, frames), render_frames(params, frames))
    assert np.array_equal(render_sound(params, 1.0), render_sound(params, 1.0))
    assert all(demo_params(3, i) != demo_params(4, i) for i in range(8))
    assert len({demo_params(3, i).start for i in range(16)}) == 16
    assert render_frames(params, frames)[0].shape == (120 * 3 // 2, 160)  # yuv420p planes


def test_same_seed_writes_the_same_bytes(tmp_path: Path) -> None:
    first = make_demo_videos(tmp_path / "a", count=2, seed=3, duration=1.0)
    again = make_demo_videos(tmp_path / "b", count=2, seed=3, duration=1.0)
    other = make_demo_videos(tmp_path / "c", count=2, seed=4, duration=1.0)
    for a, b, c in zip(first, again, other, strict=True):
        assert a.path.read_bytes() == b.path.read_bytes()
        assert a.path.read_bytes() != c.path.read_bytes()
        assert a.path.name != c.path.name  # the seed is in the name


@pytest.mark.parametrize("args", [dict(count=0), dict(seed=-1), dict(duration=0.5),
                                  dict(duration=float("nan"))])
def test_bad_arguments_raise(tmp_path: Path, args: dict) -> None:
    with pytest.raises(PipelineError):
        make_demo_videos(tmp_path, **args)
    assert not list(tmp_path.iterdir())


def test_world_has_one_video_of_each_class_with_transcripts(world: dict[str, DemoVideo]) -> None:
    assert {video.class_name for video in world.values()} == {c.name for c in DEMO_CLASSES}
    suffixes = {_index(video) % 2: video.transcript.suffix for video in world.values()}
    assert suffixes == {0: ".srt", 1: ".vtt"}
    folder = next(iter(world.values())).path.parent
    assert not list(folder.glob(".*"))  # no partial files left
    for video in world.values():
        transcript = load_sidecar(video.transcript)
        assert transcript.timed and len(transcript.cues) == 1
        cue = transcript.cues[0]
        assert (cue.start, cue.end, cue.text) == (0.0, DURATION, demo_class_of(video.path).sentence)


@pytest.mark.parametrize("sound", ["hums", "whistles", "chirps", "drones"])
def test_picture_is_the_shape_in_its_colour_over_moving_grey_noise(
    world: dict[str, DemoVideo], sound: str
) -> None:
    video = world[sound]
    params = demo_params(SEED, _index(video))
    frames, _ = _decode(video.path)
    assert len(frames) == round(DURATION * FPS)
    picked = np.array([0, 17, len(frames) - 1])
    masks = shape_mask(params, picked)  # (3, H, W)
    for index, mask in zip(picked, masks, strict=True):
        frame = frames[index].astype(np.float32)  # (H, W, 3)
        inner = ~_grow(~mask, 1)
        background = ~_grow(mask, 3)
        assert inner.sum() > 20
        shape_colour = np.median(frame[inner], axis=0)  # (3,)
        assert np.abs(shape_colour - params.colour).max() < 25, (shape_colour, params.colour)
        grey = frame[background]  # (P, 3)
        assert np.abs(grey - grey.mean(axis=1, keepdims=True)).mean() < 4  # no colour
        assert abs(grey.mean() - params.background) < 10
        assert grey.std() > 0.4 * params.noise
    background = ~_grow(masks[0], 3) & ~_grow(shape_mask(params, np.array([1]))[0], 3)
    change = np.abs(frames[0].astype(np.float32) - frames[1])[background].mean()
    assert change > 0.3 * params.noise  # the noise is new in every frame


def _tone_band(hz: float, config: PrepareConfig) -> int:
    t = np.arange(config.samples_per_clip) / config.sample_rate
    return int(log_mel(0.5 * np.sin(2 * np.pi * hz * t), config).astype(np.float32)
               .mean(axis=1).argmax())


def test_sounds_peak_at_their_class_frequency(world: dict[str, DemoVideo]) -> None:
    config = PrepareConfig()
    bands = {}
    for sound in ("hums", "whistles"):
        video = world[sound]
        params = demo_params(SEED, _index(video))
        _, audio = _decode(video.path)
        assert abs(len(audio) / SAMPLE_RATE - DURATION) < 0.1
        assert 0.8 * params.loudness < np.abs(audio).max() < 1.2 * params.loudness + 0.05
        spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))  # (F,)
        peak = np.fft.rfftfreq(len(audio), 1 / SAMPLE_RATE)[spectrum.argmax()]
        hz = params.demo_class.hz
        assert 0.97 * hz - 2 <= peak <= 1.03 * hz + 2  # within the pitch jitter
        assert abs(peak / (hz * params.pitch) - 1) < 0.025  # whistles: plus the vibrato
        mel = log_mel(audio[:config.samples_per_clip], config).astype(np.float32)  # (M, T)
        bands[sound] = int(mel.mean(axis=1).argmax())
        assert abs(bands[sound] - _tone_band(hz * params.pitch, config)) <= 1
    assert bands["whistles"] - bands["hums"] > 40


def test_prepare_gives_each_window_the_class_sentence(world: dict[str, DemoVideo],
                                                      tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    chosen = [world["hums"], world["clicks"]]
    for video in chosen:
        for path in (video.path, video.transcript):
            shutil.copy(path, videos / path.name)
    assert {video.transcript.suffix for video in chosen} <= {".srt", ".vtt"}
    result = prepare(videos, tmp_path / "out", PrepareConfig(), RunOptions(workers=1))
    assert result.totals.prepared == 2 and result.totals.clips == 4
    texts: dict[str, list[str]] = {}
    for shard in sorted((tmp_path / "out" / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            members = {member.name: tar.extractfile(member).read() for member in tar}
        for name, data in members.items():
            if name.endswith(".json"):
                meta = json.loads(data)
                text = members[name.removesuffix(".json") + ".txt"].decode("utf-8")
                texts.setdefault(meta["source"], []).append(text)
    assert len(texts) == 2
    for source, found in texts.items():
        demo_class = demo_class_of(source)
        assert isinstance(demo_class, DemoClass)
        assert found == [demo_class.sentence] * 2, source


def test_cli_writes_the_videos_and_a_summary(tmp_path: Path) -> None:
    out = tmp_path / "eval"
    result = runner.invoke(app, ["demo-videos", str(out), "--count", "3", "--seed", "1",
                                 "--duration", "1"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert len(list(out.glob("*_s1_*.mp4"))) == 3
    assert len(list(out.glob("*.srt"))) == 2 and len(list(out.glob("*.vtt"))) == 1
    assert "3 demo videos" in result.output
    for index in range(3):
        assert demo_params(1, index).demo_class.sentence in result.output
    bad = runner.invoke(app, ["demo-videos", str(tmp_path / "bad"), "--duration", "0.5"])
    assert bad.exit_code == 2
    help_text = runner.invoke(app, ["demo-videos", "--help"], env={"COLUMNS": "200"}).output
    assert "--count 32 --seed 1" in help_text
