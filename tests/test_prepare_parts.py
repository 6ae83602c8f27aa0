"""The parts of a job array, run at the same time into one folder, write exactly the shards of
one run (issue 10: `omni prepare --part I/N` for Slurm job arrays and Kubernetes Indexed Jobs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from media import make_video

ARGS = ["--workers", "1", "--videos-per-unit", "1", "--fps", "4", "--frame-size", "32",
        "--image-size", "32", "--n-mels", "16", "--eval-fraction", "0"]


def _prepare(videos: Path, out: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "from cli.app import main; main()",
                             "prepare", str(videos), str(out), *ARGS, *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            cwd=Path(__file__).resolve().parents[1])


def _finish(process: subprocess.Popen[bytes]) -> None:
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err.decode()


def test_concurrent_parts_write_the_shards_of_one_run(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    for index in range(4):
        make_video(videos / f"v{index}.mp4", duration=3.0, size=(64, 48),
                   tone_hz=300.0 + 100 * index)
    _finish(_prepare(videos, tmp_path / "whole"))
    parts = [_prepare(videos, tmp_path / "parts", "--part", f"{index}/2") for index in (1, 2)]
    for process in parts:
        _finish(process)

    def shards(out: Path) -> dict[str, bytes]:
        return {path.name: path.read_bytes() for path in (out / "shards").glob("*.tar")}

    whole, split = shards(tmp_path / "whole"), shards(tmp_path / "parts")
    assert len(whole) == 4 and whole == split
    manifest = json.loads((tmp_path / "parts" / "manifest.json").read_text())
    assert manifest["shards"] == json.loads(
        (tmp_path / "whole" / "manifest.json").read_text())["shards"]
