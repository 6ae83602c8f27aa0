"""A corpus of hostile prepared folders, read by the loader and by `omni inspect --verify
--export` in subprocesses under a memory cap: nothing runs, nothing outside a folder is read,
the bombs stay small, bad samples are dropped with a reason and good ones still arrive.

Probes: a manifest entry ``pipe:sh evil.sh`` (the script would create a marker file), an
absolute path, a ``../`` path and a link out of the folder (with and without a manifest), all
refused; a 51 kB ``clip.mp4`` of 16 frames at 4096x4096 in a set of 32 px clips (1.6 GB once
decoded); a gzip "tar" whose member declares 200 MB of zeros (900 kB on disk); a plain tar
whose clip declares 200 MB (a sparse file: no disk used); a 100 kB transcript; random bytes.

The memory cap: `RLIMIT_AS` cannot be 1.5 GB, since importing torch alone maps ~3.4 GB of
address space (the loader needs it; inspect, without torch, maps less but PyAV and numpy still
reserve much they never touch). So each subprocess first imports everything and reads one good
folder (thread pools and allocator arenas are set up by then), then caps its address space at
what it has mapped plus 1.5 GB, so a bomb fails to allocate rather than take the machine, and
reports its peak resident memory (`VmHWM`) before and after the probes. What is asserted is
that peak, minus the one after the warm-up read, stays under `MAX_GROWTH_MB`: the hostile
members are rejected from their declared sizes, never read or decoded. Before these checks the
4096x4096 clip alone took the loader from 529 MB after its imports to a 2146 MB peak, and
`inspect --export` from 59 to 3659 MB; now 577 and 113 MB.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import zlib
from fractions import Fraction
from io import BytesIO
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from pipeline.config import PrepareConfig
from pipeline.shards.decode import MAX_TEXT_BYTES
from pipeline.shards.encode import encode_sample
from pipeline.shards.schema import SampleMeta

CONFIG = PrepareConfig(clip_duration=1.0, clip_stride=1.0, fps=16, video_size=32,
                       image_size=32, n_mels=8)
BOMB_SIDE = 4096
DECLARED = 200 * 2**20  # bytes a hostile member declares
MAX_GROWTH_MB = 150  # peak resident memory a probe run may add to a good read
REPO = Path(__file__).resolve().parents[1]
Members = dict[str, bytes]  # full member name ("key.clip.mp4") -> bytes

# Both scripts take the probes as JSON, name -> (folder, the path passed, whether to run from
# inside the folder), read "warm-up" first, cap their address space and print one JSON line.
_MEMORY = """
import json, os, resource, sys

def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) // 1024

def mapped():
    for line in open("/proc/self/status"):
        if line.startswith("VmSize"):
            return int(line.split()[1]) * 1024
"""

LOADER_SCRIPT = _MEMORY + """

from pipeline.loader.shard_loader import build_shard_loader

def run(folder, path, inside):
    os.chdir(folder if inside else "/")
    try:
        loader = build_shard_loader(path, batch_size=2, shuffle_shards=False,
                                    shuffle_buffer=0, epochs=1)
        keys = [key for batch in loader for key in batch["__key__"]]
    except Exception as err:
        return {"refused": f"{type(err).__name__}: {err}"}
    stats = loader.stats
    return {"keys": keys, "dropped": stats.dropped, "corrupt": stats.corrupt_shards,
            "errors": stats.errors}

probes = json.loads(sys.argv[1])
warm = run(*probes.pop("warm-up"))
assert warm.get("keys"), warm
baseline = peak()
resource.setrlimit(resource.RLIMIT_AS, (mapped() + 1536 * 2**20, resource.RLIM_INFINITY))
results = {name: run(*probe) for name, probe in probes.items()}
print(json.dumps({"results": results, "baseline_mb": baseline, "peak_mb": peak()}))
"""

INSPECT_SCRIPT = _MEMORY + """

from typer.testing import CliRunner
from cli.app import build_app

app, runner = build_app(["inspect"]), CliRunner()
exports = sys.argv[2]

def run(name, folder, path, inside):
    os.chdir(folder if inside else "/")
    result = runner.invoke(app, ["inspect", path, "--verify", "--json", "--export",
                                 os.path.join(exports, name)])
    try:
        return {"code": result.exit_code, "document": json.loads(result.stdout)}
    except ValueError:
        return {"code": result.exit_code, "text": result.stdout}

probes = json.loads(sys.argv[1])
warm = run("warm-up", *probes.pop("warm-up"))
assert warm["code"] == 0, warm
baseline = peak()
resource.setrlimit(resource.RLIMIT_AS, (mapped() + 1536 * 2**20, resource.RLIM_INFINITY))
results = {name: run(name, *probe) for name, probe in probes.items()}
print(json.dumps({"results": results, "baseline_mb": baseline, "peak_mb": peak()}))
"""


# --------------------------------------------------------------------------- building
def sample(video: str, index: int, text: str = "hello") -> Members:
    """A valid sample of video `video` (its id), as tar members."""
    meta = SampleMeta.build(CONFIG, source=f"{video}.mp4", video_id=video, clip_index=index,
                            start=float(index), end=index + 1.0, rotation=0, has_audio=True,
                            transcript_source="srt", transcript_timed=True,
                            clip_encoding="mp4")
    shape = (CONFIG.video_frames, CONFIG.video_size, CONFIG.video_size, 3)
    members = encode_sample(meta.key, meta, np.zeros((CONFIG.n_mels, CONFIG.audio_frames),
                                                     np.float16),
                            np.full((CONFIG.image_size, CONFIG.image_size, 3), 90, np.uint8),
                            np.full(shape, 60, np.uint8), text, CONFIG)
    key = members.pop("__key__")
    return {f"{key}.{name}": data for name, data in members.items()}


def header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    return info.tobuf(tarfile.USTAR_FORMAT)


def member(name: str, data: bytes) -> bytes:
    return header(name, len(data)) + data + bytes(-len(data) % 512)


def tar_bytes(samples: list[Members]) -> bytes:
    return b"".join(member(name, data) for one in samples for name, data in one.items()) \
        + bytes(1024)


def bomb_clip() -> bytes:
    """16 black frames of 4096x4096 in 51 kB of H.264: 805 MB once decoded to RGB."""
    buffer = BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=CONFIG.fps, options={
            "preset": "ultrafast", "crf": "51", "threads": "1"})
        stream.width = stream.height = BOMB_SIDE
        stream.pix_fmt, stream.time_base = "yuv420p", Fraction(1, CONFIG.fps)
        frame = av.VideoFrame(BOMB_SIDE, BOMB_SIDE, "yuv420p")
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        packets = []
        for index in range(CONFIG.video_frames):
            frame.pts, frame.time_base = index, stream.time_base
            packets += stream.encode(frame)
        packets += stream.encode(None)
        for packet in packets:  # muxed once all are out: x264's first dts precedes pts 0
            container.mux(packet)
    return buffer.getvalue()


def write_gzip_bomb(path: Path) -> None:
    """A gzip stream of a tar whose one member declares (and holds) DECLARED zero bytes."""
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)  # 31: gzip framing
    zeros = bytes(2**20)
    with path.open("wb") as file:
        file.write(compressor.compress(header("bomb_000000.clip.mp4", DECLARED)))
        for _ in range(DECLARED // len(zeros)):
            file.write(compressor.compress(zeros))
        file.write(compressor.compress(bytes(1024)) + compressor.flush())


def write_sparse_member(path: Path, before: Members, after: list[Members]) -> None:
    """A plain tar: the members `before`, a clip of the same sample declaring DECLARED bytes
    (a hole in the file: no disk used), then the samples `after`."""
    key = next(iter(before)).split(".", 1)[0]
    with path.open("wb") as file:
        file.write(b"".join(member(name, data) for name, data in before.items()))
        file.write(header(f"{key}.clip.mp4", DECLARED))
        file.seek(DECLARED, os.SEEK_CUR)
        file.write(tar_bytes(after))


def prepared(root: Path, entries: list[tuple[str, int]] | None) -> Path:
    """`root` with a manifest listing `entries` (path, samples); None: no manifest."""
    (root / "shards").mkdir(parents=True, exist_ok=True)
    if entries is not None:
        shards = [{"path": path, "samples": samples,
                   "bytes": (root / path).stat().st_size if (root / path).is_file() else 0}
                  for path, samples in entries]
        (root / "manifest.json").write_text(json.dumps(
            {"schema_version": 1, "config": CONFIG.to_dict(), "shards": shards}))
    return root


GOOD = "shards/good-000000.tar"


def with_good_shard(root: Path) -> Path:
    """`root`/shards/good-000000.tar: two valid samples of the video "good"."""
    (root / "shards").mkdir(parents=True, exist_ok=True)
    (root / GOOD).write_bytes(tar_bytes([sample("good", 0), sample("good", 1)]))
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("hostile")
    marker = base / "ran"
    outside = prepared(with_good_shard(base / "outside"), [(GOOD, 2)])
    probes: dict[str, tuple[str, str, bool]] = {}

    def add(name: str, root: Path, path: str | None = None, inside: bool = False) -> None:
        probes[name] = (str(root), path or str(root), inside)

    add("warm-up", outside)

    root = with_good_shard(base / "pipe")
    (root / "evil.sh").write_text(f"touch {marker}\n")
    (root / "pipe:sh evil.sh").write_bytes(b"")  # the entry names an existing file
    add("pipe", prepared(root, [(GOOD, 2), ("pipe:sh evil.sh", 1)]), ".", inside=True)
    root = with_good_shard(base / "absolute")
    add("absolute", prepared(root, [(GOOD, 2), (str(outside / GOOD), 2)]))
    root = with_good_shard(base / "dotdot")
    add("dotdot", prepared(root, [(GOOD, 2), (f"shards/../../outside/{GOOD}", 2)]))
    for name, entries in (("link", [(GOOD, 2), ("shards/link.tar", 2)]), ("link-glob", None)):
        root = with_good_shard(base / name)
        (root / "shards" / "link.tar").symlink_to(outside / GOOD)
        add(name, prepared(root, entries))

    root = with_good_shard(base / "clip4096")
    bomb = sample("bomb", 0)
    bomb["bomb_000000.clip.mp4"] = bomb_clip()
    (root / "shards" / "bomb-000000.tar").write_bytes(tar_bytes([bomb, sample("bomb", 1)]))
    add("clip4096", prepared(root, [(GOOD, 2), ("shards/bomb-000000.tar", 2)]))

    root = with_good_shard(base / "gzip")
    write_gzip_bomb(root / "shards" / "bomb-000000.tar")
    add("gzip", prepared(root, [(GOOD, 2), ("shards/bomb-000000.tar", 1)]))

    root = with_good_shard(base / "sparse")
    first = {name: data for name, data in sample("bomb", 0).items()
             if not name.endswith(".clip.mp4")}
    write_sparse_member(root / "shards" / "bomb-000000.tar", first, [sample("bomb", 1)])
    add("sparse", prepared(root, [(GOOD, 2), ("shards/bomb-000000.tar", 2)]))

    root = with_good_shard(base / "longtext")
    (root / "shards" / "bomb-000000.tar").write_bytes(
        tar_bytes([sample("bomb", 0, "a" * (100 * 1024)), sample("bomb", 1)]))
    add("longtext", prepared(root, [(GOOD, 2), ("shards/bomb-000000.tar", 2)]))

    root = with_good_shard(base / "random")
    (root / "shards" / "bomb-000000.tar").write_bytes(
        np.random.default_rng(0).integers(0, 256, 20_000, np.uint8).tobytes())
    add("random", prepared(root, [(GOOD, 2), ("shards/bomb-000000.tar", 1)]))
    return {"probes": probes, "marker": marker, "base": base}


def run_capped(script: str, *args: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", script, *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "2000"})  # one line per message
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


REFUSED = {
    "pipe": "lists the shard 'pipe:sh evil.sh'",
    "absolute": "never an absolute path",
    "dotdot": "never an absolute path",
    "link": "a link that leads outside",
    "link-glob": "a link that leads outside",
}
# probe -> (the reason its bad sample or shard was dropped, a sample that must still arrive)
DROPPED = {
    "clip4096": ("frames of 4096x4096, the shard set's clips are 32x32", "bomb_000001"),
    "sparse": (f"member 'clip.mp4' declares {DECLARED} bytes", "bomb_000001"),
    "longtext": (f"member 'txt' declares {100 * 1024} bytes, more than the {MAX_TEXT_BYTES}",
                 "bomb_000001"),
}
BROKEN = ("gzip", "random")  # unreadable shards: the good one still arrives


# --------------------------------------------------------------------------- probes
def test_the_loader_refuses_escapes_and_drops_bombs_in_bounded_memory(
        corpus: dict[str, Any]) -> None:
    report = run_capped(LOADER_SCRIPT, json.dumps(corpus["probes"]))
    results = report["results"]
    assert not corpus["marker"].exists()
    for name, message in REFUSED.items():
        assert message in results[name].get("refused", ""), (name, results[name])
    good = ["good_000000", "good_000001"]
    for name, (reason, survivor) in DROPPED.items():
        result = results[name]
        assert result["keys"] == [*good, survivor], (name, result)
        assert result["dropped"] == 1 and reason in " | ".join(result["errors"]), (name, result)
    for name in BROKEN:
        result = results[name]
        assert result["keys"] == good and result["corrupt"] == 1, (name, result)
        assert "plain, uncompressed tars" in " | ".join(result["errors"]), (name, result)
    assert report["peak_mb"] - report["baseline_mb"] < MAX_GROWTH_MB, report


def test_inspect_refuses_escapes_and_reports_bombs_in_bounded_memory(
        corpus: dict[str, Any]) -> None:
    exports = corpus["base"] / "exports"
    report = run_capped(INSPECT_SCRIPT, json.dumps(corpus["probes"]), str(exports))
    results = report["results"]
    assert not corpus["marker"].exists()
    for name, message in REFUSED.items():
        assert results[name]["code"] == 1 and message in results[name].get("text", ""), (
            name, results[name])
    for name, (reason, survivor) in DROPPED.items():
        result = results[name]
        assert result["code"] == 1, (name, result)
        document = result["document"]
        problems = [problem["message"] for problem in document["verify"]["problems"]]
        assert any(reason in problem for problem in problems), (name, problems)
        exported = {item["key"]: item for item in document["export"]["samples"]}
        assert reason in exported["bomb_000000"]["error"], (name, exported)
        assert exported[survivor]["files"] and exported["good_000001"]["files"], name
    for name in BROKEN:
        result = results[name]
        assert result["code"] == 1, (name, result)
        shards = {Path(entry["path"]).name: entry for entry in
                  result["document"]["summary"]["shards"]}
        assert "unreadable from its start" in shards["bomb-000000.tar"]["error"], name
        assert shards["good-000000.tar"]["samples"] == 2, name
    assert not any(path.stat().st_size > 2**20 for path in exports.rglob("*")), "a big export"
    assert report["peak_mb"] - report["baseline_mb"] < MAX_GROWTH_MB, report
