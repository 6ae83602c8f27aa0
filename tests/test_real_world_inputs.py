"""Real-world inputs that once went wrong: byte file names, Matroska millisecond timestamps,
SRT text that is not HTML, ASS drawings, reversed cues, anamorphic pixels, cover art."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from media import (
    add_cover_art,
    make_anamorphic_video,
    make_audio_only,
    make_video,
    read_counter,
    read_samples,
)

from pipeline.config import DECODERS, PrepareConfig
from pipeline.media.subtitles import clean_text, parse_ass, parse_srt
from pipeline.media.windows import grid_frames_within, window_count
from pipeline.prepare.outdir import write_json_atomic
from pipeline.prepare.run import RunOptions, prepare
from pipeline.shards.decode import decode_member
from pipeline.shards.outcome import VideoOutcome

Prepared = tuple[dict[str, VideoOutcome], dict[str, list[dict[str, Any]]]]


@pytest.mark.parametrize(("last_frame", "frame_duration", "windows"), [
    (1.958, 0.041, 1),  # 2 s WebM at 24 fps: Matroska ms timestamps end at 1.999
    (3.933, 0.066, 3),  # 4 s Matroska at 15 fps
    (39.958, 0.041, 39),  # 40 s Matroska at 24 fps
])
def test_millisecond_short_matroska_keeps_its_last_window(last_frame: float,
                                                          frame_duration: float,
                                                          windows: int) -> None:
    config = PrepareConfig()
    duration = last_frame + frame_duration  # as the PyAV backend sums it
    assert window_count(duration, config) == windows
    assert grid_frames_within(duration, config) == round(duration * config.fps)


@pytest.mark.parametrize(("raw", "clean"), [
    ("Salt &notes", "Salt &notes"),
    ("AT&T &copy holders", "AT&T &copy holders"),
    ("a &amp; b &lt;i&gt; caf&#233;", "a & b <i> café"),
    ("three\\hspace and\\Nnext", "three space and next"),
])
def test_clean_text_leaves_plain_ampersands_and_ass_escapes(raw: str, clean: str) -> None:
    assert clean_text(raw) == clean


def test_one_reversed_srt_cue_is_skipped_not_the_whole_file() -> None:
    text = ("1\n00:00:00,500 --> 00:00:00,900\nok one\n\n"
            "2\n00:00:03,900 --> 00:00:03,500\nbackwards\n")
    transcript = parse_srt(text, "v.srt")
    assert [cue.text for cue in transcript.cues] == ["ok one"]
    assert len(transcript.notes) == 1 and "backwards" in transcript.notes[0]


def test_ass_drawings_are_not_words() -> None:
    text = ("[Events]\nFormat: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, "
            "Effect, Text\n"
            "Dialogue: 0,0:00:00.00,0:00:04.00,Default,,0,0,0,,{\\p1}m 0 0 l 100 0 100 100{\\p0}\n"
            "Dialogue: 0,0:00:01.20,0:00:01.80,Default,,0,0,0,,{\\i1}two{\\i0}\\Nlines, ok\n")
    transcript = parse_ass(text, "v.mkv")
    assert [(c.start, c.end, c.text) for c in transcript.cues] == [(1.2, 1.8, "two lines, ok")]


def test_file_names_that_are_not_utf8_can_be_recorded(tmp_path: Path) -> None:
    name = b"caf\xe9.mp4".decode("utf-8", "surrogateescape")  # what os.walk gives
    write_json_atomic(tmp_path / "stats.json", {"source": name})
    assert json.loads((tmp_path / "stats.json").read_text(encoding="utf-8")) == {"source": name}


# ------------------------------------------------------------- streams players handle
@pytest.fixture(scope="module")
def stream_videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Stored pixels twice as wide as tall; footage whose first stream is its cover art; a
    song whose only picture is its cover."""
    root = tmp_path_factory.mktemp("streams")
    videos = root / "videos"
    videos.mkdir()
    make_anamorphic_video(videos / "anamorphic.mp4", sample_aspect_ratio=2, size=(64, 64),
                          bar=(24, 16))
    footage = make_video(root / "footage.mp4", duration=3.0, size=(64, 48))
    add_cover_art(footage.path, videos / "with_cover.mp4")
    add_cover_art(make_audio_only(root / "song.m4a", duration=3.0).path, videos / "song.mp4")
    for name in ("with_cover.mp4", "song.mp4"):  # what makes the case: the cover comes first
        with av.open(str(videos / name)) as container:
            assert container.streams[0].disposition & av.stream.Disposition.attached_pic
    return videos


@pytest.fixture(scope="module", params=DECODERS)
def prepared_streams(request: pytest.FixtureRequest, stream_videos: Path,
                     tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    """`stream_videos` through `prepare` with each decoder: outcomes by source, and each
    source's samples (members decoded) in clip order."""
    out = tmp_path_factory.mktemp(f"prepared-{request.param}")
    result = prepare(stream_videos, out, PrepareConfig(decoder=request.param),
                     RunOptions(workers=1))
    samples = {key: {name: decode_member(name, data) for name, data in members.items()}
               for key, members in read_samples(out).items()}
    by_source: dict[str, list[dict[str, Any]]] = {}
    for sample in sorted(samples.values(), key=lambda s: s["json"]["clip_index"]):
        by_source.setdefault(sample["json"]["source"], []).append(sample)
    return {video.source: video for video in result.videos}, by_source


def _bar_width(picture: np.ndarray) -> int:
    """Columns of a (H, W, 3) picture that are bright from top to bottom: the white bar."""
    return int((picture.astype(np.float32).mean(axis=(0, 2)) > 128).sum())


def test_anamorphic_pictures_are_shown_with_square_pixels(prepared_streams: Prepared) -> None:
    """64x64 stored pixels at 2:1 show as 128x64. The bar, a quarter of the stored width,
    then covers half of the centre square cut from the shown picture; with the pixels left
    square it would cover a quarter of it."""
    outcomes, samples = prepared_streams
    windows = samples["anamorphic.mp4"]
    assert outcomes["anamorphic.mp4"].status == "prepared" and len(windows) == 2
    for window in windows:
        assert abs(_bar_width(window["frame.jpg"]) - 224 // 2) <= 4
        assert all(abs(_bar_width(frame) - 112 // 2) <= 3 for frame in window["clip.mp4"])


def test_the_footage_is_decoded_not_the_cover_art_before_it(prepared_streams: Prepared) -> None:
    """with_cover.mp4's first stream is a green cover picture; its windows hold the footage
    (24 fps, each frame numbered by the counter pattern) frame by frame, and its sound."""
    outcomes, samples = prepared_streams
    outcome = outcomes["with_cover.mp4"]
    assert (outcome.status, outcome.has_audio) == ("prepared", True), outcome.reason
    windows = samples["with_cover.mp4"]
    assert [window["json"]["start"] for window in windows] == [0.0, 1.0]
    for window in windows:
        first = round(window["json"]["start"] * 24)
        expected = [first + 3 * i for i in range(16)]  # the 8 fps grid over 24 fps footage
        assert [read_counter(frame) for frame in window["clip.mp4"]] == expected
        # its sound too: the tone of the odd seconds, in the loudest mel band of each second
        mel = window["mel.npy"].astype(np.float32)  # (n_mels, 200): 10 ms frames
        loudest = [mel[:, :100].mean(axis=1).max(), mel[:, 100:].mean(axis=1).max()]
        tone = 1 - int(window["json"]["start"]) % 2  # which second of the window is odd
        assert loudest[tone] > loudest[1 - tone] + 10  # log-mel: about 8 against -13.6


def test_a_song_with_only_cover_art_is_skipped_as_audio_only(prepared_streams: Prepared) -> None:
    """A cover picture is not footage: the file is skipped as any audio-only file is (README,
    "What happens to unusual videos"), not prepared as a still picture."""
    outcomes, samples = prepared_streams
    song = outcomes["song.mp4"]
    assert (song.status, song.reason) == ("skipped", "no video stream (audio only)")
    assert "song.mp4" not in samples
