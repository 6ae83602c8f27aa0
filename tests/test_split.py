"""The held-out eval split: drawn per video from a stable hash, written to shards of its own,
recorded in the stats and the manifest, and picked by the loader, inspect and training.

One module-scoped run prepares six 2 s videos in two units of three; at `--eval-fraction 0.3`
videos v0 and v2 (both in unit 0) fall into the eval split, so unit 0 writes both kinds of
shard and unit 1 only train shards.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from media import make_video
from typer.testing import CliRunner

from cli.app import app
from pipeline.config import PrepareConfig
from pipeline.errors import ConfigError
from pipeline.inspect.summary import summarize
from pipeline.inspect.target import open_target
from pipeline.inspect.verify import verify
from pipeline.loader.shard_loader import build_shard_loader
from pipeline.media.discover import video_id
from pipeline.prepare.plan import Part
from pipeline.prepare.run import PrepareResult, RunOptions, prepare
from pipeline.shards.files import shard_name, shard_split, unit_name
from pipeline.shards.manifest import read_manifest
from pipeline.shards.shardset import SHARD_GLOB, resolve_shards
from pipeline.shards.split import split_of, unit_interval

REPO = Path(__file__).resolve().parents[1]
CONFIG = PrepareConfig(clip_duration=1.0, clip_stride=1.0, fps=4, video_size=32, image_size=64,
                       n_mels=16, videos_per_unit=3, samples_per_shard=2, eval_fraction=0.3)
NAMES = [f"v{index}.mp4" for index in range(6)]
EVAL_VIDEOS = {"v0.mp4", "v2.mp4"}
CLIPS_PER_VIDEO = 2  # 2 s videos, 1 s clips every 1 s


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("split_videos")
    for name in NAMES:
        make_video(root / name, duration=2.0, size=(64, 48))
    return root


@pytest.fixture(scope="module")
def split_run(videos: Path, tmp_path_factory: pytest.TempPathFactory) -> PrepareResult:
    return prepare(videos, tmp_path_factory.mktemp("split") / "out", CONFIG, RunOptions(workers=2))


def shard_sources(out: Path) -> dict[str, set[str]]:
    """Shard file name -> the sources of its samples (from each sample's json)."""
    found: dict[str, set[str]] = {}
    for path in sorted(out.glob(SHARD_GLOB)):
        with tarfile.open(path) as tar:
            found[path.name] = {json.loads(tar.extractfile(member).read())["source"]
                                for member in tar if member.name.endswith(".json")}
    return found


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(out.glob(SHARD_GLOB))}


def loaded_sources(urls: Path, split: str | None) -> list[str]:
    loader = build_shard_loader(urls, batch_size=4, shuffle_shards=False, shuffle_buffer=0,
                                split=split)
    return [meta["source"] for batch in loader for meta in batch["meta"]]


# --------------------------------------------------------------------------- the rule
def test_split_is_a_stable_hash_threshold_that_depends_on_the_seed() -> None:
    # golden: the first 53 bits of SHA-256("0/abc"), so the split never depends on the process
    assert unit_interval(0, "abc") == (0xDD3A64D9A3EFEA66 >> 11) / 2**53
    ids = [video_id(f"clips/video{index:04d}.mp4") for index in range(2000)]
    held = {seed: {i for i in ids if split_of(i, 0.2, seed) == "eval"} for seed in (0, 1)}
    assert all(0.17 < len(chosen) / len(ids) < 0.23 for chosen in held.values())
    assert held[0] != held[1]
    smaller = {i for i in ids if split_of(i, 0.1, 0) == "eval"}
    assert smaller < held[0]  # a larger fraction only adds videos to the eval split
    assert all(split_of(i, 0.0, 0) == "train" for i in ids)
    assert {name for name in NAMES if split_of(video_id(name), 0.3, 0) == "eval"} == EVAL_VIDEOS


def test_split_is_the_same_in_every_process() -> None:
    # Python's hash() of a str changes with PYTHONHASHSEED; the split must not.
    code = ("from pipeline.shards.split import split_of; "
            "print(''.join(split_of(f'id{i}', 0.5, 7)[0] for i in range(64)))")
    outputs = {subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, text=True,
                              capture_output=True, env={**os.environ, "PYTHONHASHSEED": seed}
                              ).stdout for seed in ("1", "2")}
    assert outputs == {"".join(split_of(f"id{i}", 0.5, 7)[0] for i in range(64)) + "\n"}


@pytest.mark.parametrize("fraction", [1.0, 1.5, -0.1, math.nan])
def test_eval_fraction_outside_zero_one_is_refused(fraction: float) -> None:
    with pytest.raises(ConfigError, match=r"eval_fraction .* must lie in \[0, 1\)"):
        PrepareConfig(eval_fraction=fraction)


def test_eval_shard_names_keep_every_rule_of_the_train_names() -> None:
    train, held = shard_name(12, 3), shard_name(12, 3, "eval")
    assert (train, held) == ("unit-000012-000003.tar", "unit-000012-eval-000003.tar")
    assert (shard_split(train), shard_split(f"out/shards/{held}")) == ("train", "eval")
    assert held.startswith(unit_name(12) + "-")  # what clearing a unit removes
    assert fnmatch.fnmatch(f"shards/{held}", SHARD_GLOB)
    # a unit's train shards, then its eval shards, then the next unit
    assert sorted([shard_name(13, 0), held, train]) == [train, held, shard_name(13, 0)]
    assert "." not in held.removesuffix(".tar")


# --------------------------------------------------------------------------- prepare
def test_eval_videos_go_to_shards_of_their_own(split_run: PrepareResult) -> None:
    out = split_run.out_dir
    sources = shard_sources(out)
    held = {name: found for name, found in sources.items() if shard_split(name) == "eval"}
    trained = {name: found for name, found in sources.items() if shard_split(name) == "train"}
    assert held and all(name.startswith("unit-000000-eval-") for name in held)
    assert set().union(*held.values()) == EVAL_VIDEOS
    assert set().union(*trained.values()) == set(NAMES) - EVAL_VIDEOS
    assert {video.source: video.split for video in split_run.videos} == {
        name: "eval" if name in EVAL_VIDEOS else "train" for name in NAMES}
    stats = json.loads((out / "stats" / "unit-000000.json").read_text())
    assert {v["source"]: v["split"] for v in stats["videos"]} == {
        "v0.mp4": "eval", "v1.mp4": "train", "v2.mp4": "eval"}
    assert {s["path"].split("/")[-1]: s["split"] for s in stats["shards"]} == {
        name: shard_split(name) for name in sources if name.startswith("unit-000000-")}


def test_manifest_records_the_split_per_shard_and_per_split_totals(
        split_run: PrepareResult) -> None:
    manifest = json.loads(split_run.manifest.read_text())
    assert manifest["config"]["eval_fraction"] == 0.3 and manifest["config"]["split_seed"] == 0
    assert [shard["split"] for shard in manifest["shards"]] == [
        shard_split(shard["path"]) for shard in manifest["shards"]]
    splits, totals = manifest["splits"], manifest["totals"]
    assert splits["eval"]["videos"] == splits["eval"]["prepared"] == 2
    assert splits["eval"]["clips"] == 2 * CLIPS_PER_VIDEO
    assert splits["train"]["clips"] == 4 * CLIPS_PER_VIDEO
    assert splits["eval"]["shards"] == sum(s["split"] == "eval" for s in manifest["shards"])
    for key in ("videos", "prepared", "clips", "clips_with_text", "shards", "bytes"):
        assert splits["train"][key] + splits["eval"][key] == totals[key], key
    parsed = read_manifest(split_run.out_dir)
    assert parsed is not None and parsed.splits == splits
    assert {shard.split for shard in parsed.shards} == {"train", "eval"}


def test_parts_give_the_same_split_and_a_rerun_skips_every_unit(
        split_run: PrepareResult, videos: Path, tmp_path: Path) -> None:
    out = tmp_path / "parts"
    for index in (1, 2):
        prepare(videos, out, CONFIG, RunOptions(workers=2, part=Part(index, 2)))
    ours = json.loads((out / "manifest.json").read_text())
    theirs = json.loads(split_run.manifest.read_text())
    assert ours["shards"] == theirs["shards"] and ours["splits"] == theirs["splits"]
    assert shard_bytes(out) == shard_bytes(split_run.out_dir)
    rerun = prepare(videos, out, CONFIG, RunOptions(workers=2))
    assert rerun.plan.units_done == rerun.plan.units == 2 and rerun.plan.units_todo == 0
    assert shard_bytes(out) == shard_bytes(split_run.out_dir)


def test_fraction_zero_writes_no_eval_split(videos: Path, tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.mkdir()
    for name in ("v0.mp4", "v1.mp4"):  # v0 would be held out at 0.3
        shutil.copyfile(videos / name, source / name)
    out = tmp_path / "out"
    zero = PrepareConfig.from_dict({**CONFIG.to_dict(), "eval_fraction": 0.0})
    result = prepare(source, out, zero, RunOptions(workers=2))
    assert {video.split for video in result.videos} == {"train"}
    assert all(shard_split(name) == "train" for name in shard_bytes(out))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"]["eval"]["videos"] == manifest["splits"]["eval"]["shards"] == 0
    assert manifest["splits"]["train"] == manifest["totals"]
    with pytest.raises(ConfigError, match=r"holds no eval split: prepare with --eval-fraction > 0"):
        resolve_shards(out, split="eval")
    assert resolve_shards(out, split="train").urls == resolve_shards(out).urls


def test_a_manifest_from_before_splits_reads_as_all_train(split_run: PrepareResult,
                                                         tmp_path: Path) -> None:
    old = tmp_path / "old"
    shutil.copytree(split_run.out_dir, old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["splits"], manifest["config"]["eval_fraction"], manifest["config"]["split_seed"]
    for shard in manifest["shards"]:
        del shard["split"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    parsed = read_manifest(old)
    assert parsed is not None and parsed.config.eval_fraction == 0.0
    assert {shard.split for shard in parsed.shards} == {"train"}
    assert parsed.splits["train"] == parsed.totals and parsed.splits["eval"]["videos"] == 0
    assert len(resolve_shards(old, split="train").urls) == len(parsed.shards)
    with pytest.raises(ConfigError, match="holds no eval split: prepare with --eval-fraction"):
        resolve_shards(old, split="eval")


# --------------------------------------------------------------------------- readers
def test_resolve_shards_and_the_loader_take_one_split(split_run: PrepareResult,
                                                      tmp_path: Path) -> None:
    out = split_run.out_dir
    held = resolve_shards(out, split="eval")
    assert {shard_split(url) for url in held.urls} == {"eval"}
    assert sum(held.sample_counts.values()) == 2 * CLIPS_PER_VIDEO
    assert len(resolve_shards(out).urls) == len(held.urls) + len(
        resolve_shards(out, split="train").urls)
    evaluated = loaded_sources(out, "eval")
    assert sorted(evaluated) == sorted(sorted(EVAL_VIDEOS) * CLIPS_PER_VIDEO)
    trained = loaded_sources(out, "train")
    assert len(trained) == 4 * CLIPS_PER_VIDEO and not set(trained) & EVAL_VIDEOS
    # without a manifest the file names tell the split
    bare = tmp_path / "bare"
    shutil.copytree(out / "shards", bare / "shards")
    assert [Path(url).name for url in resolve_shards(bare, split="eval").urls] == [
        Path(url).name for url in held.urls]
    # named tar files are taken as given, whatever split is asked for
    assert resolve_shards(held.urls[:1], split="train").urls == held.urls[:1]
    with pytest.raises(ConfigError, match="split must be one of train, eval"):
        resolve_shards(out, split="test")  # type: ignore[arg-type]


def test_inspect_counts_and_verifies_each_split(split_run: PrepareResult,
                                                tmp_path: Path) -> None:
    summary = summarize(open_target([split_run.out_dir]))
    assert summary.splits["eval"].samples == 2 * CLIPS_PER_VIDEO
    assert summary.splits["eval"].videos == 2 and summary.splits["train"].videos == 4
    assert verify(open_target([split_run.out_dir])).ok
    damaged = tmp_path / "damaged"
    shutil.copytree(split_run.out_dir, damaged)
    manifest = json.loads((damaged / "manifest.json").read_text())
    manifest["splits"]["eval"]["clips"] += 1
    (damaged / "manifest.json").write_text(json.dumps(manifest))
    result = verify(open_target([damaged]))
    assert [problem.message for problem in result.problems] == [
        "the eval shards hold 4 samples, the manifest's eval split says 5"]
    cli = CliRunner().invoke(app, ["inspect", str(split_run.out_dir)], env={"COLUMNS": "200"})
    assert cli.exit_code == 0, cli.output
    for text in ("train split", "8 samples of 4 videos", "eval split", "4 samples of 2 videos"):
        assert text in cli.output, text
    document = json.loads(CliRunner().invoke(app, ["inspect", str(split_run.out_dir),
                                                   "--json"]).stdout)
    assert document["summary"]["splits"]["train"]["samples"] == 4 * CLIPS_PER_VIDEO
    assert document["summary"]["target"]["splits"]["eval"]["videos"] == 2
