"""Issue 20, §2: decode errors that the H.264 decoder conceals (a bit-flipped file decodes to
the end, its damaged macroblocks patched over) are counted per video, with both decoders, and
warned about in the prepare summary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import av
import pytest
from media import make_video, read_samples
from typer.testing import CliRunner

from cli.app import app
from pipeline.config import PrepareConfig
from pipeline.media.decode import iter_windows
from pipeline.media.windows import DecodeStats

runner = CliRunner()


def flip_bits(clean: Path, damaged: Path) -> Path:
    """``clean`` with one byte of every sixth H.264 packet flipped, 3/4 into its payload (in
    mdat, past the NAL length and slice header): decoding runs to the end with macroblock
    errors that FFmpeg only logs, as in a file damaged on disk."""
    data = bytearray(clean.read_bytes())
    with av.open(str(clean)) as container:
        packets = [(p.pos, p.size) for p in container.demux(container.streams.video[0])
                   if p.size]
    for position, size in packets[1::6]:
        data[position + size * 3 // 4] ^= 0x55
    damaged.write_bytes(bytes(data))
    return damaged


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bitflip")
    clean = make_video(root / "clean.mp4", duration=3.0, size=(160, 120), pattern="waves").path
    flip_bits(clean, root / "bitflip.mp4")
    return root


def _windows(path: Path, config: PrepareConfig, threads: int = 0
             ) -> tuple[list, DecodeStats]:
    stats = DecodeStats()
    return list(iter_windows(path, config, stats, threads=threads)), stats


@pytest.mark.parametrize("decoder", ["pyav", "ffmpeg"])
def test_concealed_decode_errors_are_counted(videos: Path, decoder: str) -> None:
    config = PrepareConfig(decoder=decoder)
    windows, stats = _windows(videos / "clean.mp4", config)
    assert (stats.decode_errors, stats.first_error, stats.first_decode_error) == (0, None, None)
    damaged, stats = _windows(videos / "bitflip.mp4", config)
    assert len(damaged) == len(windows) == 2  # decoded to the end: nothing raised
    assert stats.packets_skipped == 0 and stats.decode_errors >= 3
    problem = stats.first_error or stats.first_decode_error  # ffmpeg's stderr; PyAV's flags
    assert problem is not None and "error" in problem


def test_windows_from_the_middle_close_threaded_decoders_without_hanging(
        tmp_path: Path) -> None:
    """Decode errors used to be counted from FFmpeg's log, whose PyAV callback takes the GIL
    from the decoder's threads: closing a frame-threaded decoder after a window from the middle
    of a video (as `VideoWatchingDataset` does) hung about one run in two. Run apart, so a hang
    fails instead of stopping the suite."""
    make_video(tmp_path / "a.mp4", duration=5.0, size=(64, 48))
    make_video(tmp_path / "b.mkv", duration=4.0, size=(64, 48), tone_hz=880.0)
    code = ("from omnilatent import OmniLatentConfig\n"
            "from omnilatent.training.video_dataset import VideoWatchingDataset\n"
            "config = OmniLatentConfig(hidden_dim=32, num_layers=1, num_heads=4, n_mels=16,\n"
            "    audio_frames=200, image_size=32, patch_size=16, video_size=32, video_frames=8)\n"
            f"dataset = VideoWatchingDataset(video_dir={str(tmp_path)!r}, config=config,\n"
            "    clip_duration=2.0, clip_stride=1.0)\n"
            "for _ in range(4):\n"
            "    windows = [dataset[i] for i in range(len(dataset))]\n"
            "print('ok')\n")
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("closing a decoder hung")
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_prepare_counts_and_warns_per_video(videos: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["prepare", str(videos), str(tmp_path / "out"), "--workers",
                                 "1", "--eval-fraction", "0"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "decode errors" in result.output and "in 1 video" in result.output
    assert "bitflip.mp4: decoder: " in result.output and "decode errors;" in result.output
    document = runner.invoke(app, ["prepare", str(videos), str(tmp_path / "json"), "--workers",
                                   "1", "--eval-fraction", "0", "--json"])
    counts = {video["source"]: video["decode_errors"]
              for video in json.loads(document.stdout)["videos"]}
    assert counts["clean.mp4"] == 0 and counts["bitflip.mp4"] >= 3
    # the clean video's samples are the same beside the damaged one as alone
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "clean.mp4").write_bytes((videos / "clean.mp4").read_bytes())
    single = runner.invoke(app, ["prepare", str(alone), str(tmp_path / "single"), "--workers",
                                 "1", "--eval-fraction", "0"])
    assert single.exit_code == 0, single.output
    beside = read_samples(tmp_path / "out")
    assert read_samples(tmp_path / "single").items() <= beside.items()
