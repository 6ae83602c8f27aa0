"""Decoding videos into clip windows, with both backends (PyAV and the ffmpeg CLI).

Test videos come from `media`: each frame shows its index as grey levels and the audio carries
a tone in odd seconds only, so timing is checked from decoded pixels and samples.

Measured agreement between the backends with the bundled builds (PyAV 18 / FFmpeg 8 libraries
vs the imageio-ffmpeg 9.0 binary): frames and images are bit-identical (mean absolute
difference 0.0, textured content included); audio is sample-identical when the audio stream
starts at time 0, and correlates at 0.9966 (RMS difference 0.03) when it starts late, because
ffmpeg places the first sample with sub-sample precision. The tests allow 3 grey levels and
correlation > 0.99 / RMS < 0.05 so that another ffmpeg build (`OMNI_FFMPEG`) still passes.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import os
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest
from media import (
    counter_picture,
    make_audio_only,
    make_video,
    mux_subtitles,
    random_bytes_file,
    read_counter,
    stripe_side,
    truncate_file,
)
from PIL import Image

from pipeline.config import PrepareConfig
from pipeline.errors import DecodeError
from pipeline.media import packets as pyav_packets
from pipeline.media import probe as probe_pyav
from pipeline.media.decode import iter_windows, probe
from pipeline.media.ffmpeg_bin import ffmpeg_binary, stderr_summary
from pipeline.media.windows import DecodeStats, Window, WindowAssembler, window_count

DECODERS = ["pyav", "ffmpeg"]
CONFIG = PrepareConfig()
FRAME_TOLERANCE = 3.0  # grey levels, mean absolute difference between backends (measured 0.0)
AUDIO_MIN_CORRELATION = 0.99  # measured >= 0.9966
AUDIO_MAX_RMS = 0.05  # measured <= 0.03


def decode(path: Path, decoder: str, stats: DecodeStats | None = None) -> list[Window]:
    return list(iter_windows(path, dataclasses.replace(CONFIG, decoder=decoder), stats))


def ffmpeg_run(*args: str) -> None:
    subprocess.run([ffmpeg_binary(), "-nostdin", "-v", "error", "-y", *args], check=True)


def expected_pick(frame_times: list[float], grid_index: int, start: float = 0.0) -> int:
    """Index of the frame on screen at grid time k / fps (the first one before it starts)."""
    t = grid_index / CONFIG.fps + start
    return max(0, bisect.bisect_right(frame_times, t + 1e-6) - 1)


def assert_frames_follow(windows: list[Window], frame_times: list[float]) -> None:
    for window in windows:
        first = window.index * CONFIG.stride_frames
        got = [read_counter(frame) for frame in window.frames]
        want = [expected_pick(frame_times, first + i) % 256 for i in range(len(got))]
        assert got == want, f"window {window.index}"
        middle = expected_pick(frame_times, first + CONFIG.video_frames // 2) % 256
        assert read_counter(window.image) == middle


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("decode_media")


@pytest.fixture(scope="module")
def counter_video(media_dir: Path):
    """4 s, 24 fps, mono 440 Hz tone in odd seconds."""
    return make_video(media_dir / "counter.mp4", duration=4.0, fps=24)


@pytest.fixture(scope="module")
def long_videos(media_dir: Path) -> dict[int, Path]:
    """Tiny 20 s and 60 s videos with audio, for memory bounds and streaming."""
    return {
        seconds: make_video(
            media_dir / f"long{seconds}.mp4", duration=seconds, fps=8, size=(32, 32),
            sample_rate=16000,
        ).path
        for seconds in (20, 60)
    }  # fmt: skip


# -- windows: count, times ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("duration", "count"),
    [(1.5, 0), (1.99, 0), (2.0, 1), (2.5, 1), (3.0, 2), (3.999, 3), (4.0, 3), (5.5, 4)],
)
def test_window_count_formula(duration: float, count: int) -> None:
    # floor((D - clip_duration) / stride) + 1, with 1 ms of slack for millisecond timestamps.
    assert window_count(duration, CONFIG) == count


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize(
    ("name", "duration", "count"),
    [
        ("short.mp4", 1.5, 0),  # shorter than one clip: no windows, no error
        ("one.mp4", 2.0, 1),  # exactly one clip
        ("between.mp4", 2.5, 1),
        ("three.mp4", 4.25, 3),
        ("ms.mkv", 4.0, 3),  # Matroska ends at 3.999 s; the last clip is kept
    ],
)
def test_window_count_and_times(
    media_dir: Path, decoder: str, name: str, duration: float, count: int
) -> None:
    path = make_video(media_dir / name, duration=duration, size=(64, 48), audio=None).path
    windows = decode(path, decoder)
    assert [w.index for w in windows] == list(range(count))
    for w in windows:
        assert w.start == pytest.approx(w.index * CONFIG.clip_stride)
        assert w.end == pytest.approx(w.start + CONFIG.clip_duration)
        assert w.frames.shape == (CONFIG.video_frames, 112, 112, 3)
        assert w.frames.dtype == np.uint8
        assert w.image.shape == (224, 224, 3) and w.image.dtype == np.uint8
        assert w.audio.shape == (CONFIG.samples_per_clip,) and w.audio.dtype == np.float32


# -- frame selection by timestamp ---------------------------------------------------------


@pytest.mark.parametrize("decoder", DECODERS)
def test_grid_frame_is_the_frame_on_screen(counter_video, decoder: str) -> None:
    windows = decode(counter_video.path, decoder)
    assert len(windows) == 3
    # At 24 fps the frame shown at t is floor(24 t): grid frame k at t = k/8 is source 3k.
    assert [read_counter(f) for f in windows[1].frames] == [3 * k for k in range(8, 24)]
    assert_frames_follow(windows, counter_video.frame_times)


@pytest.mark.parametrize("decoder", DECODERS)
def test_grid_frame_between_source_frames(media_dir: Path, decoder: str) -> None:
    video = make_video(media_dir / "fps25.mp4", duration=3.0, fps=25, size=(64, 48), audio=None)
    windows = decode(video.path, decoder)
    expected = [(8 + i) * 25 // 8 for i in range(16)]  # floor(25 t), t = k / 8
    assert [read_counter(f) for f in windows[1].frames] == expected
    assert_frames_follow(windows, video.frame_times)


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("suffix", ["mp4", "mkv"])
def test_variable_frame_rate_picks_by_timestamp(media_dir: Path, decoder: str, suffix: str) -> None:
    video = make_video(media_dir / f"vfr.{suffix}", duration=3.0, vfr=True, size=(64, 48))
    stats = DecodeStats()
    windows = decode(video.path, decoder, stats)
    assert len(windows) == 2
    assert_frames_follow(windows, video.frame_times)


def assert_same_windows(got: list[Window], want: list[Window]) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert (a.index, a.start, a.end) == (b.index, b.start, b.end)
        assert np.array_equal(a.frames, b.frames) and np.array_equal(a.image, b.image)
        assert np.array_equal(a.audio, b.audio)


@pytest.mark.parametrize("pattern", ["counter", "waves"])
def test_frames_no_grid_time_shows_are_not_decoded(media_dir: Path, pattern: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # 30 fps onto the 8 fps grid: most frames are replaced on screen before the next grid
    # time, and x264's non-reference B-frames among them need not be decoded at all.
    video = make_video(media_dir / f"bframes-{pattern}.mp4", duration=4.0, fps=30,
                       pattern=pattern)
    stats = DecodeStats()
    windows = decode(video.path, "pyav", stats)
    monkeypatch.setattr(pyav_packets.FrameSkipper, "applies", staticmethod(lambda _: False))
    full_stats = DecodeStats()
    full = decode(video.path, "pyav", full_stats)
    assert full_stats.video_frames == len(video.frame_times)
    assert stats.video_frames < full_stats.video_frames  # measured: 89 and 84 of 120
    assert_same_windows(windows, full)  # bit for bit
    if pattern == "counter":
        assert_frames_follow(windows, video.frame_times)


@pytest.mark.parametrize("decoder", DECODERS)
def test_decoder_threads_do_not_change_the_windows(counter_video, decoder: str) -> None:
    config = dataclasses.replace(CONFIG, decoder=decoder)
    one = list(iter_windows(counter_video.path, config, threads=1))
    assert_same_windows(one, list(iter_windows(counter_video.path, config, threads=3)))
    assert_same_windows(one, decode(counter_video.path, decoder))


@pytest.mark.parametrize("decoder", DECODERS)
def test_time_zero_is_the_container_start(media_dir: Path, decoder: str, counter_video) -> None:
    # MPEG-TS keeps the AAC priming samples, so audio starts ~23 ms before video and the
    # first video frame sits at t = 0.023; both backends must measure from the same origin.
    path = media_dir / "counter.ts"
    ffmpeg_run("-i", str(counter_video.path), "-c", "copy", "-f", "mpegts", str(path))
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        offset = float(video.start_time * video.time_base) - container.start_time / av.time_base
    assert 0.01 < offset < 0.1
    times = [offset + t for t in counter_video.frame_times]
    windows = decode(path, decoder)
    assert probe(path).start_time > 1.0  # TS clocks do not start at zero
    assert_frames_follow(windows, times)
    assert read_counter(windows[0].frames[1]) == 2  # t = 0.125: frame 2 (0.106), not 3 (0.148)


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("codec", ["mpeg1video", "mpeg2video"])
def test_raw_elementary_stream_is_timed_from_its_first_frame(media_dir: Path, decoder: str,
                                                            codec: str, counter_video) -> None:
    # A raw MPEG-1/2 stream named .mpg (no program-stream container) stores no timestamps.
    # PyAV's demuxer guesses some (MPEG-2 frame k at (k + 1)/24; MPEG-1: 0, then (k + 1)/24),
    # the ffmpeg CLI drops them and times frames from 0: both must show frame k at k/24.
    path = media_dir / f"elementary_{codec}.mpg"
    if not path.exists():
        ffmpeg_run("-i", str(counter_video.path), "-an", "-c:v", codec, "-q:v", "2", "-f", codec,
                   str(path))  # fmt: skip
    assert probe(path).start_time == 0.0
    windows = decode(path, decoder)
    assert len(windows) == 3
    assert_frames_follow(windows, counter_video.frame_times)


# -- rotation -----------------------------------------------------------------------------


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize(
    ("rotation", "side"), [(0, "top"), (90, "right"), (180, "bottom"), (270, "left")]
)
def test_display_rotation_is_applied(media_dir: Path, decoder: str, rotation: int, side: str):
    path = make_video(
        media_dir / f"rot{rotation}.mp4", duration=2.0, size=(64, 48), audio=None,
        rotation=rotation,
    ).path  # fmt: skip
    info = probe(path)
    assert info.rotation == rotation
    assert (info.width, info.height) == ((48, 64) if rotation in (90, 270) else (64, 48))
    (window,) = decode(path, decoder)
    # The stripe marks the top of the coded picture; a player turns it clockwise.
    assert stripe_side(window.image) == side
    assert stripe_side(window.frames[0]) == side


# What ffmpeg's autorotate shows for each display matrix (a b / c d, in units of 1.0), made with
# `ffmpeg -display_rotation R [-display_hflip] [-display_vflip] -i in.mp4 -c copy out.mov` and
# measured with ffmpeg 8: turned clockwise by `rotation`, then mirrored left-right if `flip`.
MATRIX_ORIENTATIONS = [
    ((1, 0, 0, 1), 0, False),
    ((0, 1, -1, 0), 90, False),
    ((-1, 0, 0, -1), 180, False),
    ((0, -1, 1, 0), 270, False),
    ((-1, 0, 0, 1), 0, True),  # -display_hflip
    ((0, 1, 1, 0), 90, True),
    ((1, 0, 0, -1), 180, True),  # -display_vflip
    ((0, -1, -1, 0), 270, True),  # -display_rotation 90 -display_hflip
]


@pytest.mark.parametrize(("abcd", "rotation", "flip"), MATRIX_ORIENTATIONS)
def test_display_matrix_gives_ffmpegs_orientation(abcd: tuple[int, ...], rotation: int,
                                                  flip: bool) -> None:
    a, b, c, d = (value << 16 for value in abcd)  # 16.16 fixed point
    matrix = (a, b, 0, c, d, 0, 0, 0, 1 << 30)
    assert probe_pyav.matrix_orientation(matrix) == (rotation, flip)


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize(
    ("options", "rotation"),
    [
        (["-display_rotation", "90", "-display_hflip"], 270),
        (["-display_rotation", "0", "-display_hflip"], 0),
        (["-display_rotation", "0", "-display_vflip"], 180),
    ],
)
def test_display_mirror_is_applied(media_dir: Path, decoder: str, options: list[str],
                                   rotation: int) -> None:
    # A square textured picture, so that the mirrored file's image is exactly the plain one's
    # turned and mirrored (the centre crop cuts nothing to shift by a pixel).
    plain = media_dir / "mirror_plain.mp4"
    if not plain.exists():
        make_video(plain, duration=2.0, size=(48, 48), audio=None, pattern="waves")
    path = media_dir / f"mirror{''.join(options)}.mov"
    if not path.exists():
        ffmpeg_run(*options, "-i", str(plain), "-c", "copy", str(path))
    info = probe(path)
    assert (info.rotation, info.flip) == (rotation, True)
    (window,) = decode(path, decoder)
    (upright,) = decode(plain, decoder)
    expected = np.fliplr(np.rot90(upright.image, k=-rotation // 90))
    assert np.array_equal(window.image, expected)


# -- audio --------------------------------------------------------------------------------


def second_rms(audio: np.ndarray, second: int) -> float:
    """RMS of one second of a window's audio, 50 ms away from its edges."""
    rate = CONFIG.sample_rate
    part = audio[second * rate + rate // 20 : (second + 1) * rate - rate // 20]
    return float(np.sqrt(np.mean(part**2)))


def peak_hz(audio: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(audio))  # (N/2+1,)
    return float(np.argmax(spectrum) * CONFIG.sample_rate / len(audio))


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize(
    ("channels", "tone_hz", "rate"), [(1, 440.0, 44100), (2, 1000.0, 48000), (6, 300.0, 44100)]
)
def test_audio_is_mono_16k_tone_at_the_right_time(
    media_dir: Path, decoder: str, channels: int, tone_hz: float, rate: int
) -> None:
    path = make_video(
        media_dir / f"tone{channels}.mp4", duration=3.0, size=(32, 32), channels=channels,
        tone_hz=tone_hz, sample_rate=rate,
    ).path  # fmt: skip
    info = probe(path)
    assert (info.has_audio, info.audio_channels, info.audio_rate) == (True, channels, rate)
    windows = decode(path, decoder)
    assert len(windows) == 2
    for w in windows:
        assert np.abs(w.audio).max() <= 1.0
        for half in (0, 1):
            second = w.index + half  # absolute second of the video
            rms = second_rms(w.audio, half)
            if second % 2:
                assert rms > 0.1, f"tone missing in second {second}"
                tone = w.audio[half * CONFIG.sample_rate : (half + 1) * CONFIG.sample_rate]
                assert peak_hz(tone) == pytest.approx(tone_hz, abs=2.0)
            else:
                assert rms < 0.02, f"sound in silent second {second}"


@pytest.mark.parametrize("decoder", DECODERS)
def test_video_without_audio_gets_silence(media_dir: Path, decoder: str) -> None:
    path = make_video(media_dir / "silent.mp4", duration=2.0, size=(32, 32), audio=None).path
    assert probe(path).has_audio is False
    (window,) = decode(path, decoder)
    assert not window.audio.any()


@pytest.mark.parametrize("decoder", DECODERS)
def test_audio_that_ends_early_is_zero_padded(media_dir: Path, decoder: str) -> None:
    video = make_video(media_dir / "v4.mp4", duration=4.0, size=(32, 32), audio=None).path
    sound = make_audio_only(media_dir / "a2.m4a", duration=2.0).path
    path = media_dir / "short_audio.mp4"
    ffmpeg_run("-i", str(video), "-i", str(sound), "-map", "0:v", "-map", "1:a", "-c", "copy",
               str(path))  # fmt: skip
    windows = decode(path, decoder)
    assert len(windows) == 3
    # Second 1 has the tone; from 2 s on (after the codec's last, padded frame) only zeros.
    tail = CONFIG.sample_rate // 10
    assert second_rms(windows[1].audio, 0) > 0.1
    assert not windows[1].audio[CONFIG.sample_rate + tail :].any()
    assert not windows[2].audio[tail:].any()


# -- broken and unusual inputs ------------------------------------------------------------


@pytest.mark.parametrize("decoder", DECODERS)
def test_audio_only_file_has_no_video_stream(media_dir: Path, decoder: str) -> None:
    path = make_audio_only(media_dir / "only.m4a").path
    with pytest.raises(DecodeError, match="no video stream"):
        probe(path)
    with pytest.raises(DecodeError, match="no video stream"):
        decode(path, decoder)


@pytest.mark.parametrize("decoder", DECODERS)
def test_unreadable_files_raise_decode_error(media_dir: Path, decoder: str, counter_video):
    empty = media_dir / "empty.mp4"
    empty.write_bytes(b"")
    noise = random_bytes_file(media_dir / "noise.mp4", 20_000)
    # PyAV's MP4 muxer writes the index (moov) last, so half a file has no index at all.
    cut = media_dir / "cut.mp4"
    cut.write_bytes(counter_video.path.read_bytes())
    truncate_file(cut, 0.5)
    for path, reason in [
        (empty, "empty file (0 bytes)"),
        (noise, "not a readable media file (Invalid data found when processing input)"),
        (cut, "not a readable media file (no moov index: the file was cut before its writer "
              "finished)"),
    ]:
        with pytest.raises(DecodeError) as raised:
            decode(path, decoder)
        assert str(raised.value) == reason  # no "[Errno N]", no path: the caller records it
    with pytest.raises(DecodeError, match="no such file"):
        decode(media_dir / "missing.mp4", decoder)


def test_a_file_that_ends_inside_its_header_says_so(media_dir: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # What libavformat raises for a file cut within its header (e.g. the first 40 bytes of a
    # Matroska file; where exactly depends on the muxer, so the error is simulated).
    path = random_bytes_file(media_dir / "header_only.mkv", 40)

    def ends_early(*args: object, **kwargs: object) -> None:
        raise av.error.EOFError(541478725, "End of file", str(path))

    monkeypatch.setattr(av, "open", ends_early)
    with pytest.raises(DecodeError) as raised:
        probe(path)
    assert str(raised.value) == "not a readable media file (it ends inside its header: cut short?)"


@pytest.mark.parametrize("decoder", DECODERS)
def test_decoder_complaints_are_short_and_stable(media_dir: Path, decoder: str, counter_video):
    # Index first (+faststart), then cut: the last packets are incomplete, decoding goes on.
    path = media_dir / f"faststart_cut_{decoder}.mp4"
    ffmpeg_run("-i", str(counter_video.path), "-c", "copy", "-movflags", "+faststart", str(path))
    truncate_file(path, 0.9)
    complaints = []
    for _ in range(2):
        stats = DecodeStats()
        assert len(decode(path, decoder, stats)) == 2
        complaints.append(stats.first_error)
    complaint = complaints[0]
    assert complaint and complaints[1] == complaint  # the same text on every run
    for noise in ("Errno", "()", "@ 0x", str(path)):
        assert noise not in complaint
    if decoder == "pyav":
        assert complaint == ("the audio decoder rejected a packet: "
                             "Invalid data found when processing input")


def test_ffmpeg_stderr_summary_drops_addresses_and_repeats() -> None:
    stderr = (
        "[h264 @ 0x55d1d749fb80] Error splitting the input into NAL units.\n"
        "[vist#0:0/h264 @ 0x55d1d74458c0] [dec:h264 @ 0x55d1d749f280] Error submitting packet "
        "to decoder: Invalid data found when processing input\n"
        "[h264 @ 0x55d1d749fb80] co located POCs unavailable\n"
        "    Last message repeated 1 times\n"
        "[h264 @ 0x55d1d749fc00] co located POCs unavailable\n"
        "[in#0/mov,mp4,m4a,3gp,3g2,mj2 @ 0x55561c49ab80] stream 0, offset 0x6697: partial file\n"
    )
    assert stderr_summary(stderr, lines=3) == (
        "Error submitting packet to decoder: Invalid data found when processing input | "
        "co located POCs unavailable | stream 0, offset 0x6697: partial file"
    )


@pytest.mark.parametrize("decoder", DECODERS)
def test_truncated_stream_yields_the_windows_before_the_cut(media_dir: Path, decoder: str):
    # Matroska and MPEG-TS can be read up to the cut: the windows that fit come out, with
    # correct timing, and the rest is silently missing (like a partly downloaded file).
    video = make_video(media_dir / "whole.mkv", duration=6.0, size=(64, 48))
    assert len(decode(video.path, decoder)) == 5
    cut = media_dir / f"cut_{decoder}.mkv"
    cut.write_bytes(video.path.read_bytes())
    truncate_file(cut, 0.6)
    stats = DecodeStats()
    windows = decode(cut, decoder, stats)
    assert 1 <= len(windows) < 5
    assert stats.duration is not None and stats.duration < 6.0
    assert_frames_follow(windows, video.frame_times)


def test_truncated_stream_gives_the_same_windows_in_both_backends(media_dir: Path) -> None:
    video = make_video(media_dir / "whole_ts.mkv", duration=5.0, size=(64, 48))
    cut = media_dir / "cut.ts"
    ffmpeg_run("-i", str(video.path), "-c", "copy", "-f", "mpegts", str(cut))
    truncate_file(cut, 0.7)
    counts = {decoder: len(decode(cut, decoder)) for decoder in DECODERS}
    assert counts["pyav"] == counts["ffmpeg"] >= 1


@pytest.mark.parametrize("offset", [0.0, 40.0])
def test_joined_recordings_stop_at_the_timestamp_jump(media_dir: Path, offset: float) -> None:
    # Two 3 s MPEG-TS recordings joined with `cat`: the second restarts its clock (offset 0)
    # or leaps 40 s ahead. Decoding ends at the jump, the first recording's windows all come
    # out with correct frames, and the jump is reported; nothing of the second is mixed in.
    video = make_video(media_dir / "part.mkv", duration=3.0, size=(64, 48))
    first, second = media_dir / "first.ts", media_dir / f"second_{offset:g}.ts"
    ffmpeg_run("-i", str(video.path), "-c", "copy", "-f", "mpegts", str(first))
    ffmpeg_run("-i", str(video.path), "-c", "copy", "-output_ts_offset", str(offset),
               "-f", "mpegts", str(second))
    joined = media_dir / f"joined_{offset:g}.ts"
    joined.write_bytes(first.read_bytes() + second.read_bytes())
    stats = DecodeStats()
    windows = decode(joined, "pyav", stats)
    alone = decode(first, "pyav")
    assert len(windows) == len(alone) == 2
    for got, want in zip(windows, alone, strict=True):
        np.testing.assert_array_equal(got.frames, want.frames)
        np.testing.assert_array_equal(got.audio, want.audio)
    assert stats.first_error is not None and "timestamps jump" in stats.first_error


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("name", ["one_frame.mp4", "png_image.mp4"])
def test_video_of_one_frame_has_no_window_and_no_error(media_dir: Path, decoder: str,
                                                       name: str) -> None:
    # Shorter than one grid step: no grid slot lies inside it. The ffmpeg backend's counting
    # output must not end up empty, which ffmpeg reports as a failure.
    path = media_dir / name
    if name == "one_frame.mp4":
        make_video(path, duration=1 / 24, size=(64, 48), audio=None)
    else:  # a photo with a video extension
        Image.fromarray(counter_picture(0, 64, 48)).save(path, format="PNG")
    stats = DecodeStats()
    assert decode(path, decoder, stats) == []
    assert stats.duration is not None and stats.duration < 0.1
    assert stats.first_error is None


# -- the two backends agree ---------------------------------------------------------------


def make_case(media_dir: Path, case: str) -> Path:
    if case == "counter-stereo":
        return make_video(media_dir / "eq_counter.mp4", duration=3.0, channels=2).path
    if case == "waves-5.1":
        return make_video(media_dir / "eq_waves.mp4", duration=3.0, pattern="waves",
                          channels=6).path  # fmt: skip
    if case == "vfr-mkv":
        return make_video(media_dir / "eq_vfr.mkv", duration=3.0, vfr=True).path
    if case == "mjpeg-avi":  # full-range yuvj420p with centred chroma
        return make_video(media_dir / "eq_mjpeg.avi", duration=2.0, size=(64, 48),
                          pattern="waves", codec="mjpeg").path  # fmt: skip
    if case == "late-audio":  # audio starts 0.5 s after video
        base = make_video(media_dir / "eq_base.mp4", duration=3.0, pattern="waves").path
        path = media_dir / "eq_late.mkv"
        ffmpeg_run("-i", str(base), "-itsoffset", "0.5", "-i", str(base), "-map", "0:v",
                   "-map", "1:a", "-c", "copy", str(path))  # fmt: skip
        return path
    if case == "subtitles":
        base = make_video(media_dir / "eq_sub_base.mp4", duration=3.0).path
        srt = media_dir / "eq.srt"
        srt.write_text("1\n00:00:00,500 --> 00:00:01,500\nhello\n", encoding="utf-8")
        return mux_subtitles(base, srt, media_dir / "eq_sub.mkv")
    raise ValueError(case)


@pytest.mark.parametrize(
    "case", ["counter-stereo", "waves-5.1", "vfr-mkv", "mjpeg-avi", "late-audio", "subtitles"]
)
def test_backends_yield_equivalent_windows(media_dir: Path, case: str) -> None:
    path = make_case(media_dir, case)
    pyav, ffm = decode(path, "pyav"), decode(path, "ffmpeg")
    assert len(pyav) == len(ffm) >= 1
    for a, b in zip(pyav, ffm, strict=True):
        assert (a.index, a.start, a.end) == (b.index, b.start, b.end)
        assert np.abs(a.frames.astype(np.int16) - b.frames).mean() < FRAME_TOLERANCE
        assert np.abs(a.image.astype(np.int16) - b.image).mean() < FRAME_TOLERANCE
        assert np.sqrt(np.mean((a.audio - b.audio) ** 2)) < AUDIO_MAX_RMS
        if a.audio.std() > 0.01:
            assert np.corrcoef(a.audio, b.audio)[0, 1] > AUDIO_MIN_CORRELATION


# -- streaming and memory -----------------------------------------------------------------


@pytest.mark.parametrize("decoder", DECODERS)
def test_windows_stream_with_bounded_memory(long_videos: dict[int, Path], decoder: str) -> None:
    # At most ceil(clip_duration / stride) + 1 windows' frames may be held at once.
    frame_bound = (math.ceil(CONFIG.clip_duration / CONFIG.clip_stride) + 1) * (
        CONFIG.video_frames
    )
    peaks = {}
    for seconds, path in long_videos.items():
        stats = DecodeStats()
        windows = iter_windows(path, dataclasses.replace(CONFIG, decoder=decoder), stats)
        first = next(windows)
        assert first.index == 0
        # Streaming: the first window comes out long before the video is read.
        assert stats.grid_frames <= CONFIG.video_frames + CONFIG.stride_frames
        assert sum(1 for _ in windows) + 1 == seconds - 1
        assert stats.peak_buffered_frames <= frame_bound
        assert stats.peak_buffered_samples <= 3 * CONFIG.samples_per_clip
        peaks[seconds] = (stats.peak_buffered_frames, stats.peak_buffered_samples)
    assert peaks[60] == peaks[20]  # memory does not grow with the video's length


def _children() -> list[str]:
    """Command names of this process's live children (Linux /proc)."""
    names = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == os.getpid() and fields[0] != "Z":
            names.append(stat.split("(", 1)[1].split(")", 1)[0])
    return names


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_closing_the_ffmpeg_stream_early_kills_ffmpeg(long_videos: dict[int, Path]) -> None:
    windows = iter_windows(long_videos[60], dataclasses.replace(CONFIG, decoder="ffmpeg"))
    next(windows)
    assert any("ffmpeg" in name for name in _children())
    windows.close()
    assert not any("ffmpeg" in name for name in _children())


# -- probe and the assembler --------------------------------------------------------------


def test_probe_reports_the_header(counter_video) -> None:
    info = probe(counter_video.path)
    assert info.duration_hint == pytest.approx(4.0, abs=0.05)
    assert info.fps_hint == pytest.approx(24.0)
    assert (info.width, info.height, info.rotation) == (160, 120, 0)
    assert (info.has_audio, info.audio_channels, info.audio_rate) == (True, 1, 44100)
    assert info.start_time == 0.0 and info.pixel_format == "yuv420p"


def _assembler(has_audio: bool = True) -> tuple[WindowAssembler, DecodeStats]:
    stats = DecodeStats()
    return WindowAssembler(CONFIG, has_audio, stats), stats


def _grid_image(value: int) -> np.ndarray:
    return np.full((224, 224, 3), value, dtype=np.uint8)


def test_assembler_releases_each_window_once_the_next_frame_proves_it_fits() -> None:
    assembler, _ = _assembler(has_audio=False)
    released = []
    for k in range(24):
        assembler.add_frame(_grid_image(k))
        released += [(k, w.index) for w in assembler.ready()]
    # Window 0 needs grid frames 0..15; frame 16 shows the video lasts past its end.
    assert released == [(16, 0)]
    final = list(assembler.finish(24))  # exactly 24 grid frames fit: window 1 (8..23) too
    assert [w.index for w in final] == [1]
    assert final[0].frames[0, 0, 0, 0] == 8 and final[0].image[0, 0, 0] == 16


def test_assembler_places_audio_by_timestamp() -> None:
    assembler, _ = _assembler()
    rate = CONFIG.sample_rate
    ones = np.ones(rate // 2, dtype=np.float32)
    assembler.add_audio(ones, position=rate // 4)  # starts 0.25 s late: silence before
    assembler.add_audio(ones, position=rate // 4 + rate // 2 + 10)  # jitter: appended
    assembler.add_audio(ones, position=2 * rate)  # 0.75 s gap: filled with silence
    assembler.add_audio(ones, position=2 * rate + rate // 4)  # overlap: trimmed
    for k in range(17):
        assembler.add_frame(_grid_image(k))
    assembler.end_audio()
    (window,) = list(assembler.ready())
    audio = window.audio
    assert not audio[: rate // 4].any() and audio[rate // 4 : rate * 5 // 4].all()
    assert not audio[rate * 5 // 4 : 2 * rate].any()
    assert len(audio) == 2 * rate


def test_assembler_waits_for_audio_and_says_so() -> None:
    assembler, stats = _assembler()
    for k in range(17):
        assembler.add_frame(_grid_image(k))
    assert assembler.audio_wanted() and list(assembler.ready()) == []
    assembler.add_audio(np.zeros(CONFIG.samples_per_clip, dtype=np.float32), position=0)
    assert not assembler.audio_wanted()
    assert [w.index for w in assembler.ready()] == [0]
    assert stats.windows == 1 and stats.peak_buffered_frames == 17
