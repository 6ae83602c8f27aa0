"""Real-world inputs that once went wrong: byte file names, Matroska millisecond timestamps,
SRT text that is not HTML, ASS drawings, reversed cues, anamorphic pixels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.config import PrepareConfig
from pipeline.decode import VideoInfo, grid_frames_within, window_count
from pipeline.outdir import write_json_atomic
from pipeline.transcripts import clean_text, parse_ass, parse_srt


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


def test_anamorphic_pictures_are_scaled_to_square_pixels() -> None:
    info = VideoInfo(path=Path("dvd.mpg"), duration_hint=4.0, width=720, height=480,
                     rotation=0, fps_hint=25.0, has_audio=False, audio_channels=None,
                     audio_rate=None, sample_aspect_ratio=32 / 27)
    assert info.square_pixel_size == (853, 480)
