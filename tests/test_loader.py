"""Streaming loader: batch format, inputs, determinism, rank split, safety, errors, resume."""

from __future__ import annotations

import gzip
import io
import json
import pickle
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import torch
import webdataset as wds
from av.video.reformatter import VideoReformatter
from media import i420_frames

from pipeline.config import PrepareConfig
from pipeline.errors import ConfigError, PipelineError
from pipeline.loader import batches as batches_module
from pipeline.loader import shard_loader as loader_module
from pipeline.loader.batches import collate
from pipeline.loader.samples import sample_tensors
from pipeline.loader.shard_loader import ShardLoader, build_shard_loader
from pipeline.media.discover import video_id
from pipeline.normalize import i420_to_rgb, to_model_units
from pipeline.shards import decode as decode_module
from pipeline.shards.decode import (
    MAX_TEXT_BYTES,
    CorruptMemberError,
    decode_member,
    decode_sample,
)
from pipeline.shards.encode import encode_clip, encode_sample
from pipeline.shards.schema import MEL_CENTER, MEL_SCALE, SampleMeta
from pipeline.shards.shardset import expand_urls, split_member_name
from pipeline.shards.validate import validate_sample
from pipeline.tokenizer import byte_detokenize

# Small sizes keep the shards tiny; the loader must take them from the manifest or the json.
SMALL = PrepareConfig(clip_duration=1.0, clip_stride=1.0, fps=4, video_size=32, image_size=64,
                      n_mels=16)
SHARDS, PER_SHARD = 3, 4
Edit = Callable[[int, int, dict[str, Any]], None]  # (shard, index, members) -> None


@pytest.fixture(autouse=True)
def no_sleeping(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any test in which the loader sleeps (webdataset's warn_and_continue does)."""
    def refuse(seconds: float) -> None:
        raise AssertionError(f"the loader slept {seconds} s")

    monkeypatch.setattr(time, "sleep", refuse)


def sample_members(config: PrepareConfig, shard: int, index: int,
                   encoding: str = "npy") -> dict[str, Any]:
    """Sample `index` of video `shard`: pixels and mel tell which one it is."""
    vid = video_id(f"videos/v{shard}.mp4")
    meta = SampleMeta.build(
        config, source=f"videos/v{shard}.mp4", video_id=vid, clip_index=index,
        start=float(index), end=index + config.clip_duration, rotation=0, has_audio=True,
        transcript_source="srt", transcript_timed=True, clip_encoding=encoding,
    )
    value = 10 + 20 * shard + 4 * index
    rng = np.random.default_rng(value)
    mel = rng.uniform(-13.8, 8.8, (config.n_mels, config.audio_frames)).astype(np.float16)
    image = np.full((config.image_size, config.image_size, 3), value, np.uint8)
    frames = np.full((config.video_frames, config.video_size, config.video_size, 3), value,
                     np.uint8)
    frames[:, 0, 0] = (0, 255, 128)  # the extremes, to check the [-1, 1] mapping
    text = "" if index == 0 else f"clip {index} of vidéo {shard}"
    return encode_sample(meta.key, meta, mel, image, frames, text, config)


def write_shards(root: Path, config: PrepareConfig = SMALL, *, manifest: bool = True,
                 encoding: str = "npy", edit: Edit | None = None) -> list[str]:
    """SHARDS shards of PER_SHARD samples under root/shards; returns the keys in write order."""
    (root / "shards").mkdir(parents=True, exist_ok=True)
    keys, entries = [], []
    for shard in range(SHARDS):
        path = root / "shards" / f"shard-{shard:06d}.tar"
        with wds.TarWriter(str(path)) as writer:
            for index in range(PER_SHARD):
                members = sample_members(config, shard, index, encoding)
                keys.append(members["__key__"])
                if edit is not None:
                    edit(shard, index, members)
                writer.write(members)
        entries.append({"path": f"shards/{path.name}", "samples": PER_SHARD,
                        "bytes": path.stat().st_size})
    if manifest:
        (root / "manifest.json").write_text(json.dumps(
            {"schema_version": 1, "shards": entries, "config": config.to_dict()}))
    return keys


def all_keys(loader: ShardLoader) -> list[str]:
    return [key for batch in loader for key in batch["__key__"]]


@pytest.fixture
def prepared(tmp_path: Path) -> tuple[Path, list[str]]:
    keys = write_shards(tmp_path / "out")
    return tmp_path / "out", keys


# --------------------------------------------------------------------------- batch format
def test_batches_have_model_shapes_stored_dtypes_and_ranges(
        prepared: tuple[Path, list[str]]) -> None:
    root, keys = prepared
    loader = build_shard_loader(root, batch_size=5, shuffle_shards=False, shuffle_buffer=0)
    batches = list(loader)
    assert [len(b["__key__"]) for b in batches] == [5, 5, 2]
    batch = batches[0]
    assert set(batch) == {"video", "image", "audio", "text", "has_text", "has_audio", "__key__",
                          "meta"}
    assert batch["video"].shape == (5, 3, 4, 32, 32) and batch["video"].dtype == torch.uint8
    assert batch["image"].shape == (5, 64, 64, 3) and batch["image"].dtype == torch.uint8
    assert to_model_units("image", batch["image"]).shape == (5, 3, 64, 64)  # channels first
    assert batch["audio"].shape == (5, 16, 100) and batch["audio"].dtype == torch.float16
    assert batch["text"].dtype == torch.long and batch["text"].dim() == 2
    assert batch["has_text"].dtype == torch.bool and batch["has_text"].shape == (5,)
    assert batch["has_audio"].tolist() == [m["has_audio"] for m in batch["meta"]]
    assert batch["__key__"] == keys[:5]
    assert [m["key"] for m in batch["meta"]] == keys[:5]

    assert batch["video"][1, :, 1, 5, 5].tolist() == [14, 14, 14]
    assert batch["video"][0, :, 0, 0, 0].tolist() == [0, 255, 128]  # channels first
    video = to_model_units("video", batch["video"])
    assert video.min() == -1.0 and video.max() == 1.0
    assert torch.allclose(video[1, :, 1, 5, 5], torch.full((3,), (14 / 255 - 0.5) / 0.5))
    assert float(video[0, 2, 0, 0, 0]) == pytest.approx((128 / 255 - 0.5) / 0.5, abs=1e-6)
    image = to_model_units("image", batch["image"])
    assert -1.0 <= float(image.min()) and float(image.max()) <= 1.0

    mel = np.random.default_rng(10).uniform(-13.8, 8.8, (16, 100)).astype(np.float16)
    assert torch.equal(batch["audio"][0], torch.from_numpy(mel))  # exactly as stored
    expected_audio = (torch.from_numpy(mel).float() - MEL_CENTER) / MEL_SCALE
    assert torch.allclose(to_model_units("audio", batch["audio"])[0], expected_audio)


def test_collate_copies_each_sample_into_its_channels_first_place() -> None:
    """The batch equals what ``torch.stack`` then ``permute(...).contiguous()`` made before
    (issue 19), byte for byte, for every stored modality; mismatched samples are refused."""
    rng = np.random.default_rng(0)
    samples = [sample_tensors(rng.integers(0, 256, (4, 6, 8, 3), dtype=np.uint8),
                              rng.integers(0, 256, (10, 10, 3), dtype=np.uint8),
                              rng.normal(size=(5, 7)).astype(np.float16), "hi")
               for _ in range(3)]
    batch = collate(samples)
    for name, layout in (("video", (0, 4, 1, 2, 3)), ("image", None), ("audio", None)):
        stacked = torch.stack([sample[name] for sample in samples])
        old = stacked if layout is None else stacked.permute(layout).contiguous()
        assert batch[name].is_contiguous() and batch[name].dtype == old.dtype, name
        assert torch.equal(batch[name], old), name
    odd = sample_tensors(np.zeros((4, 6, 8, 3), np.uint8), np.zeros((10, 10, 3), np.uint8),
                         np.zeros((5, 8), np.float16), "hi")  # one mel frame more
    with pytest.raises(PipelineError, match="audio of the batch's samples differ"):
        collate([samples[0], odd])


@pytest.mark.parametrize("encoding", ["npy", "mp4"])
def test_clips_decode_into_their_batch_slots(tmp_path: Path, encoding: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Each clip, picture and mel is decoded straight into its row of the batch's video,
    image and audio, which `collate` takes without copying; the batches equal the members
    decoded alone: an npy clip's RGB
    channels first, an mp4 clip's frames as the decoder gives them, yuv420p planes (I420,
    (B, T, 3H/2, W)). The samples of a batch are decoded member by member (every clip, then
    every picture, ...); a sample dropped after its members were decoded (its json
    contradicts its txt) or while they were (a corrupt clip) leaves its rows to the next."""
    clip = f"clip.{encoding}"

    def damage(shard: int, index: int, members: dict[str, Any]) -> None:
        if (shard, index) == (0, 2):
            members["json"] = json.dumps({**json.loads(members["json"]),
                                          "transcript_source": "none"}).encode()
        if (shard, index) == (1, 1):
            members[clip] = members[clip][: len(members[clip]) // 2]

    keys = write_shards(tmp_path, encoding=encoding, edit=damage)
    stacked: list[str] = []
    stack = batches_module.stack_into_layout
    monkeypatch.setattr(batches_module, "stack_into_layout",
                        lambda values, layout, name, out=None: stacked.append(name)
                        or stack(values, layout, name, out))
    order: list[str] = []
    decode = decode_module.decode_member
    monkeypatch.setattr(decode_module, "decode_member",
                        lambda name, *args: order.append(name) or decode(name, *args))
    loader = build_shard_loader(tmp_path, batch_size=5, shuffle_shards=False, shuffle_buffer=0)
    batches = list(loader)
    assert loader.stats.skipped_samples == 2 and stacked == []
    assert [key for batch in batches for key in batch["__key__"]] == keys[:2] + keys[3:5] + keys[6:]
    first = order[:5 * 5]  # the first batch's five raw samples, five members each
    assert [first[i:i + 5] for i in range(0, 25, 5)] == [[name] * 5 for name in first[::5]]
    clips: dict[str, np.ndarray] = {}
    alone: dict[tuple[str, str], np.ndarray] = {}
    for path in sorted((tmp_path / "shards").glob("*.tar")):
        with tarfile.open(path) as archive:
            for member in archive:
                key, suffix = split_member_name(member.name)
                handle = archive.extractfile(member)
                if key == keys[5]:  # its clip is cut short
                    continue
                if suffix in ("frame.jpg", "mel.npy") and handle is not None:
                    alone[key, suffix] = decode_member(suffix, handle.read())
                elif suffix == "clip.npy" and handle is not None:
                    clips[key] = decode_member(suffix, handle.read()).transpose(3, 0, 1, 2)
                elif suffix == "clip.mp4" and handle is not None:
                    clips[key] = i420_frames(handle.read())  # (T, 3H/2, W)
    size, frames = SMALL.video_size, SMALL.video_frames
    layout = (3, frames, size, size) if encoding == "npy" else (frames, size * 3 // 2, size)
    for batch in batches:
        video = torch.stack([torch.from_numpy(clips[key]) for key in batch["__key__"]])
        assert batch["video"].is_contiguous()
        assert batch["video"].shape == (len(video), *layout)
        assert torch.equal(batch["video"], video)
        for name, member in (("image", "frame.jpg"), ("audio", "mel.npy")):
            assert torch.equal(batch[name], torch.stack(
                [torch.from_numpy(alone[key, member]) for key in batch["__key__"]])), name


@pytest.mark.parametrize("size", [16, 40, 56])
def test_mp4_clips_decode_as_per_frame_swscale_rgb24_did(size: int) -> None:
    """The RGB clip decode (one swscale thread, one context kept across clips, into a
    channels-first buffer) gives the frames that per-frame rgb24 from a fresh default swscale
    context per clip gave (issue 19), clip after clip, noise included; at widths that are not
    a multiple of 16 too (planar gbrp filled their last columns with garbage)."""
    rng = np.random.default_rng(1)
    for clip in range(3):
        frames = rng.integers(0, 256, (5, size, size, 3), dtype=np.uint8)
        frames[:, :8] = 40 * clip  # a flat region beside the noise
        data = encode_clip(frames, "mp4", 4)
        with av.open(io.BytesIO(data), "r", format="mp4") as container:
            reformatter = VideoReformatter()
            old = np.stack([reformatter.reformat(frame, format="rgb24").to_ndarray()
                            for frame in container.decode(video=0)])
        new = decode_member("clip.mp4", data, {"video_frames": 5, "video_size": size})
        assert new.dtype == np.uint8 and np.array_equal(new, old), clip
        assert new.transpose(3, 0, 1, 2).flags.c_contiguous  # channels first in memory
        for sizes in ({"video_frames": 9, "video_size": size}, None):  # fewer frames than room
            assert np.array_equal(decode_member("clip.mp4", data, sizes), old), sizes


def test_an_mp4_clip_of_another_pixel_format_decodes_to_yuv420p_planes() -> None:
    """A clip stream that is not yuv420p (prepare never writes one) still fills an I420 slot
    correctly: its frames converted to yuv420p by swscale, as PyAV's reformat gives them."""
    rng = np.random.default_rng(2)
    frames = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=4)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv444p"
        for picture in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        container.mux(stream.encode(None))
    data = buffer.getvalue()
    with av.open(io.BytesIO(data), "r", format="mp4") as container:
        decoded = list(container.decode(video=0))
        assert decoded[0].format.name == "yuv444p"
        wanted = np.stack([VideoReformatter().reformat(frame, format="yuv420p").to_ndarray()
                           for frame in decoded])
    slot = np.full((3, 24, 16), 7, np.uint8)
    clip = decode_member("clip.mp4", data, {"video_frames": 3, "video_size": 16}, out=slot)
    assert np.shares_memory(clip, slot) and np.array_equal(clip, wanted)


def test_a_batch_of_mp4_and_npy_clips_is_all_rgb(tmp_path: Path) -> None:
    """Shard sets of both clip encodings in one loader: a batch of mp4 clips is I420, one of
    npy clips RGB, and one of both RGB (B, 3, T, H, W), its mp4 clips converted as
    `to_model_units` converts I420, its npy clips as stored."""
    write_shards(tmp_path / "mp4", encoding="mp4")
    write_shards(tmp_path / "npy", encoding="npy")
    loader = build_shard_loader([str(tmp_path / "mp4"), str(tmp_path / "npy")], batch_size=8,
                                shuffle_shards=False, shuffle_buffer=0)
    batches = list(loader)
    size, frames = SMALL.video_size, SMALL.video_frames
    assert [tuple(batch["video"].shape) for batch in batches] == [
        (8, frames, size * 3 // 2, size), (8, 3, frames, size, size),
        (8, 3, frames, size, size)]
    mixed = batches[1]["video"]  # mp4 shard 2, then npy shard 0
    for index in range(PER_SHARD):
        planes = i420_frames(sample_members(SMALL, 2, index, "mp4")["clip.mp4"])
        assert torch.equal(mixed[index], i420_to_rgb(torch.from_numpy(planes)))
        clip = decode_member("clip.npy", sample_members(SMALL, 0, index)["clip.npy"])
        assert torch.equal(mixed[PER_SHARD + index], torch.from_numpy(clip).permute(3, 0, 1, 2))


def _decode_in_child(data: bytes, queue: Any) -> None:
    queue.put(decode_member("clip.mp4", data).shape)


def test_a_worker_forked_after_the_parent_decoded_a_clip_decodes_too() -> None:
    """The swscale context a thread keeps across clips holds no threads (one swscale thread),
    so a process forked from one that has decoded, as a DataLoader worker is, decodes too:
    with swscale's default thread pool the child waited forever on threads it did not have."""
    import multiprocessing

    data = encode_clip(np.zeros((3, 16, 16, 3), np.uint8), "mp4", 4)
    decode_member("clip.mp4", data)  # the parent's context exists before the fork
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_decode_in_child, args=(data, queue))
    child.start()
    child.join(timeout=30)
    if child.is_alive():
        child.kill()
        child.join()
        pytest.fail("the forked child hung decoding a clip")
    assert child.exitcode == 0 and queue.get(timeout=5) == (3, 16, 16, 3)


def test_pin_memory_is_off_by_default_and_refused_without_cuda(
        prepared: tuple[Path, list[str]]) -> None:
    root, _ = prepared
    assert build_shard_loader(root, batch_size=2).pin_memory is False
    with pytest.raises(ConfigError, match="pin_memory"):
        build_shard_loader(root, batch_size=2, pin_memory=1)  # type: ignore[arg-type]
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="pin_memory=True needs a CUDA device"):
            build_shard_loader(root, batch_size=2, pin_memory=True)


@pytest.mark.parametrize("pin", [False, True])
def test_pin_memory_reaches_the_dataloader(prepared: tuple[Path, list[str]],
                                           monkeypatch: pytest.MonkeyPatch, pin: bool) -> None:
    """The flag is handed to the DataLoader, whose thread pins the workers' chunks (pinning
    itself needs CUDA: without it, this checks the hand-over only, and starts no worker)."""
    root, _ = prepared
    seen: list[dict[str, Any]] = []

    class Recording:
        def __init__(self, dataset: Any, **kwargs: Any) -> None:
            seen.append(kwargs)
            raise StopAfterRecording

    class StopAfterRecording(Exception):
        pass

    monkeypatch.setattr(loader_module, "DataLoader", Recording)
    loader = build_shard_loader(root, batch_size=2, num_workers=2)
    loader.pin_memory = pin  # True is refused without CUDA: set past the check
    with pytest.raises(StopAfterRecording):
        next(iter(loader))
    assert seen[0]["pin_memory"] is pin and seen[0]["num_workers"] == 2


def test_empty_transcript_gives_an_all_padding_row(prepared: tuple[Path, list[str]]) -> None:
    root, _ = prepared
    loader = build_shard_loader(root, batch_size=4, shuffle_shards=False, shuffle_buffer=0)
    batch = next(iter(loader))
    assert batch["has_text"].tolist() == [False, True, True, True]
    assert not batch["text"][0].any()
    assert byte_detokenize(batch["text"][2]) == "clip 2 of vidéo 0"
    lengths = (batch["text"] != 0).sum(dim=1)
    assert int(lengths.max()) == batch["text"].shape[1]


def test_all_padding_batch_still_has_one_text_column(tmp_path: Path) -> None:
    write_shards(tmp_path)
    loader = build_shard_loader(tmp_path, batch_size=1, shuffle_shards=False, shuffle_buffer=0)
    first = next(iter(loader))
    assert first["text"].shape == (1, 1) and not first["has_text"].any()


def test_mp4_clips_load_close_to_their_source(tmp_path: Path) -> None:
    keys = write_shards(tmp_path, encoding="mp4")
    loader = build_shard_loader(tmp_path, batch_size=4, shuffle_shards=False, shuffle_buffer=0)
    batch = next(iter(loader))
    assert batch["__key__"] == keys[:4]
    assert batch["video"].shape == (4, 4, 48, 32)  # I420: (B, T, 3H/2, W)
    pixels = i420_to_rgb(batch["video"])[:, :, :, 8:, 8:].float()  # away from the marked corner
    wanted = torch.tensor([10.0, 14.0, 18.0, 22.0]).view(4, 1, 1, 1, 1)
    assert (pixels - wanted).abs().mean() < 2.0


# --------------------------------------------------------------------------- inputs
def test_brace_pattern_list_and_directories_give_the_same_samples(tmp_path: Path) -> None:
    keys = write_shards(tmp_path / "with", manifest=True)
    write_shards(tmp_path / "without", manifest=False)
    pattern = str(tmp_path / "with" / "shards" / "shard-{000000..000002}.tar")
    paths = [str(p) for p in sorted((tmp_path / "with" / "shards").glob("*.tar"))]
    for source in (pattern, paths, tmp_path / "with", str(tmp_path / "without")):
        loader = build_shard_loader(source, batch_size=4, shuffle_shards=False,
                                    shuffle_buffer=0)
        assert all_keys(loader) == keys, source


def test_missing_inputs_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        build_shard_loader(str(tmp_path / "shard-{000000..000001}.tar"), batch_size=2)
    with pytest.raises(ConfigError, match="omni prepare"):
        build_shard_loader(tmp_path, batch_size=2)
    write_shards(tmp_path / "out")
    (tmp_path / "out" / "shards" / "shard-000001.tar").unlink()
    with pytest.raises(ConfigError, match="shard-000001.tar, which does not exist"):
        build_shard_loader(tmp_path / "out", batch_size=2)


def test_manifest_config_sets_the_expected_sizes(tmp_path: Path) -> None:
    write_shards(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["config"]["image_size"] = 96  # the shards hold 64: none may pass
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    loader = build_shard_loader(tmp_path, batch_size=4)
    with pytest.raises(PipelineError, match="no valid sample"):
        list(loader)
    assert loader.stats.skipped_samples == SHARDS * PER_SHARD
    # refused from the jpeg's header, before its pixels are decoded
    assert "image of 64x64, the shard set's images are 96x96" in loader.stats.errors[-1]


def test_manifest_of_another_schema_version_is_refused(tmp_path: Path) -> None:
    write_shards(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["schema_version"] = 2
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="schema v2"):
        build_shard_loader(tmp_path, batch_size=4)


def test_without_manifest_the_first_sample_sets_the_sizes(tmp_path: Path) -> None:
    def bigger_frames(shard: int, index: int, members: dict[str, Any]) -> None:
        if (shard, index) == (2, 3):
            members.clear()
            members.update(sample_members(PrepareConfig(clip_duration=1.0, fps=4,
                                                        video_size=48, image_size=64,
                                                        n_mels=16), shard, index))

    keys = write_shards(tmp_path, manifest=False, edit=bigger_frames)
    loader = build_shard_loader(tmp_path, batch_size=4, shuffle_shards=False, shuffle_buffer=0)
    assert all_keys(loader) == keys[:-1]
    assert loader.stats.skipped_samples == 1 and "its video_size is 48" in loader.stats.errors[-1]


# --------------------------------------------------------------------------- determinism
def test_same_seed_same_order_and_another_seed_another(prepared: tuple[Path,
                                                                       list[str]]) -> None:
    root, keys = prepared

    def order(seed: int) -> list[str]:
        return all_keys(build_shard_loader(root, batch_size=3, seed=seed, shuffle_buffer=6))

    first = order(0)
    assert sorted(first) == sorted(keys)
    assert order(0) == first
    assert order(1) != first


def test_epochs_advance_and_reshuffle(prepared: tuple[Path, list[str]]) -> None:
    root, keys = prepared
    loader = build_shard_loader(root, batch_size=5, seed=3, shuffle_buffer=6, epochs=2)
    epoch0 = all_keys(loader)
    assert loader.state_dict() == {"epoch": 1, "batches": 0, "consumed": [0], "found": []}
    epoch1 = all_keys(loader)
    assert sorted(epoch0) == sorted(epoch1) == sorted(keys)
    assert epoch0 != epoch1
    assert list(loader) == []  # epochs=2 are done
    assert loader.stats.samples == 2 * len(keys) and loader.stats.batches == 6


def test_ranks_read_disjoint_samples_that_cover_everything(prepared: tuple[Path,
                                                                          list[str]]) -> None:
    root, keys = prepared
    seen = [all_keys(build_shard_loader(root, batch_size=2, seed=5, rank=rank, world_size=2))
            for rank in (0, 1)]
    assert seen[0] and seen[1]
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(keys)


def test_rank_comes_from_the_environment(prepared: tuple[Path, list[str]],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    root, _ = prepared
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    loader = build_shard_loader(root, batch_size=2)
    assert (loader.rank, loader.world_size) == (1, 3)
    with pytest.raises(ConfigError, match="cannot feed 4 ranks"):
        build_shard_loader(root, batch_size=2, rank=0, world_size=4)


# --------------------------------------------------------------------------- safety, errors
def test_pickled_members_are_never_deserialised(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    payload = pickle.dumps(_Touch(marker))
    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps(_Touch(proof)))
    assert proof.exists()  # the payload works when unpickled

    def plant(shard: int, index: int, members: dict[str, Any]) -> None:
        members["evil.pyd"] = payload
        members["evil.pickle"] = payload

    keys = write_shards(tmp_path / "out", edit=plant)
    loader = build_shard_loader(tmp_path / "out", batch_size=4, shuffle_buffer=0)
    assert sorted(all_keys(loader)) == sorted(keys)  # the samples themselves are fine
    assert not marker.exists()
    assert loader.stats.unsafe_members == 2 * len(keys)
    assert "evil.pickle, evil.pyd" in loader.stats.errors[-1]


class _Touch:
    """Unpickling this object creates `path`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.path,))


def test_corrupt_member_missing_member_and_truncated_shard_are_skipped(tmp_path: Path) -> None:
    def damage(shard: int, index: int, members: dict[str, Any]) -> None:
        if (shard, index) == (0, 1):
            members["mel.npy"] = b"\x93NUMPY garbage"
        if (shard, index) == (1, 2):
            del members["frame.jpg"]

    keys = write_shards(tmp_path, edit=damage)
    shard2 = tmp_path / "shards" / "shard-000002.tar"
    data = shard2.read_bytes()
    shard2.write_bytes(data[: len(data) // 2])  # cut inside a member

    loader = build_shard_loader(tmp_path, batch_size=4, shuffle_shards=False, shuffle_buffer=0)
    delivered = all_keys(loader)
    intact = [keys[0], keys[2], keys[3], keys[4], keys[5], keys[7]]
    assert delivered[:6] == intact
    assert keys[8] in delivered and set(delivered) <= set(intact) | set(keys[8:11])
    stats = loader.stats
    assert stats.corrupt_shards == 1
    assert stats.skipped_samples == 3  # mel, jpg, and the sample the cut went through
    assert stats.samples == len(delivered)
    reasons = " | ".join(stats.errors)
    assert "mel.npy" in reasons and "missing member 'frame.jpg'" in reasons
    assert "unreadable shard" in reasons


def test_shard_cut_between_members_is_caught_by_the_manifest_count(tmp_path: Path) -> None:
    keys = write_shards(tmp_path)
    shard = tmp_path / "shards" / "shard-000001.tar"
    with wds.TarWriter(str(shard)) as writer:  # rewrite it with its last sample missing
        for index in range(PER_SHARD - 1):
            writer.write(sample_members(SMALL, 1, index))
    loader = build_shard_loader(tmp_path, batch_size=4, shuffle_shards=False, shuffle_buffer=0)
    assert all_keys(loader) == keys[:7] + keys[8:]
    assert loader.stats.corrupt_shards == 1 and "3 samples" in loader.stats.errors[-1]


def test_not_a_tar_at_all_is_counted(tmp_path: Path) -> None:
    keys = write_shards(tmp_path, manifest=False)
    (tmp_path / "shards" / "shard-000001.tar").write_bytes(b"this is no tar file" * 100)
    loader = build_shard_loader(tmp_path, batch_size=4, shuffle_shards=False, shuffle_buffer=0)
    assert all_keys(loader) == keys[:4] + keys[8:]
    assert loader.stats.corrupt_shards == 1


def test_an_epoch_without_any_valid_sample_raises(tmp_path: Path) -> None:
    write_shards(tmp_path, edit=lambda shard, index, members: members.pop("txt"))
    loader = build_shard_loader(tmp_path, batch_size=4)
    with pytest.raises(PipelineError, match="missing member 'txt'"):
        list(loader)


# --------------------------------------------------------------------------- resume
def test_resume_continues_with_the_next_batch(tmp_path: Path) -> None:
    # One corrupt sample: resume must skip raw samples, not batches * batch_size.
    def damage(shard: int, index: int, members: dict[str, Any]) -> None:
        if (shard, index) == (1, 1):
            members["clip.npy"] = b"broken"

    write_shards(tmp_path, edit=damage)

    def build() -> ShardLoader:
        return build_shard_loader(tmp_path, batch_size=2, seed=7, shuffle_buffer=5)

    reference = build()
    expected = [b["__key__"] for b in reference] + [b["__key__"] for b in reference]

    for taken in (1, 3, 5):
        first = build()
        iterator = iter(first)
        seen = [next(iterator)["__key__"] for _ in range(taken)]
        state = json.loads(json.dumps(first.state_dict()))  # as a checkpoint stores it
        assert state["batches"] == taken

        resumed = build()
        resumed.load_state_dict(state)
        rest = [b["__key__"] for b in resumed] + [b["__key__"] for b in resumed]
        assert seen + rest == expected, taken


def test_a_resumed_epoch_counts_a_corrupt_shard_once(tmp_path: Path) -> None:
    """A resumed epoch reads its shards again from the start: what the tar stage found before
    the checkpoint must not be counted again (issue 9, items 7 and 8)."""
    write_shards(tmp_path, manifest=False)
    (tmp_path / "shards" / "shard-000000.tar").write_bytes(b"this is no tar file" * 100)

    def build() -> ShardLoader:
        return build_shard_loader(tmp_path, batch_size=2, shuffle_shards=False,
                                  shuffle_buffer=0, epochs=1)

    reference = build()
    all_keys(reference)
    assert reference.stats.corrupt_shards == 1
    first = build()
    iterator = iter(first)
    next(iterator)  # the broken shard came first: it was found before this batch left
    state = json.loads(json.dumps(first.state_dict()))
    assert state["found"] == [["corrupt_shards", str(tmp_path / "shards" / "shard-000000.tar")]]
    resumed = build()
    resumed.load_state_dict(state)
    all_keys(resumed)
    assert first.stats.corrupt_shards + resumed.stats.corrupt_shards == 1
    with pytest.raises(ConfigError, match="unknown counters"):
        build().load_state_dict({**state, "found": [["samples", "x"]]})


def test_resume_after_the_last_batch_of_an_epoch_starts_the_next(
        prepared: tuple[Path, list[str]]) -> None:
    root, _ = prepared
    reference = build_shard_loader(root, batch_size=4, seed=2, shuffle_buffer=3)
    epoch0, epoch1 = list(reference), list(reference)
    first = build_shard_loader(root, batch_size=4, seed=2, shuffle_buffer=3)
    iterator = iter(first)
    for _ in epoch0:
        next(iterator)
    resumed = build_shard_loader(root, batch_size=4, seed=2, shuffle_buffer=3)
    resumed.load_state_dict(first.state_dict())
    assert list(resumed) == []  # the rest of epoch 0 is empty
    assert [b["__key__"] for b in resumed] == [b["__key__"] for b in epoch1]


def test_workers_deliver_every_sample_once_and_resume_without_repeats(
        prepared: tuple[Path, list[str]]) -> None:
    root, keys = prepared

    def build() -> ShardLoader:
        return build_shard_loader(root, batch_size=2, seed=4, shuffle_buffer=3, num_workers=2)

    whole = build()
    assert sorted(all_keys(whole)) == sorted(keys)
    assert whole.stats.samples == len(keys)

    first = build()
    iterator = iter(first)
    seen = [key for _ in range(3) for key in next(iterator)["__key__"]]
    del iterator
    state = first.state_dict()
    assert len(state["consumed"]) == 2
    resumed = build()
    resumed.load_state_dict(state)
    rest = all_keys(resumed)
    assert sorted(seen + rest) == sorted(keys)


def test_workers_are_started_once_and_kept_across_epochs_and_left_iterations(
        prepared: tuple[Path, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    """Persistent workers read each epoch and resume position as an iteration starts: the
    epochs and an iteration left early and continued are those of loaders built for them, with
    one DataLoader (one start of the workers), and the trainer's torch random stream is not
    drawn on."""
    root, keys = prepared
    started: list[Any] = []

    class Counting(loader_module.DataLoader):  # type: ignore[misc, name-defined]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            started.append(kwargs)
            super().__init__(*args, **kwargs)

    def build(epochs: int | None = 3) -> ShardLoader:
        return build_shard_loader(root, batch_size=2, seed=4, shuffle_buffer=3, num_workers=2,
                                  epochs=epochs)

    monkeypatch.setattr(loader_module, "DataLoader", Counting)
    rng = torch.random.get_rng_state()
    loader = build()
    epoch0 = all_keys(loader)
    iterator = iter(loader)
    partial = [key for _ in range(2) for key in next(iterator)["__key__"]]
    iterator.close()  # left early: the workers' prefetched chunks are dropped
    epoch1 = partial + all_keys(loader)
    epoch2 = all_keys(loader)
    assert len(started) == 1 and loader._workers is None  # the last epoch ended: they exit
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert all(sorted(epoch) == sorted(keys) for epoch in (epoch0, epoch1, epoch2))
    for epoch, seen in ((1, epoch1), (2, epoch2)):
        fresh = build(None)
        fresh.load_state_dict({"epoch": epoch, "batches": 0, "consumed": [0, 0]})
        assert all_keys(fresh) == seen
    assert epoch1 != epoch0


def test_state_from_another_worker_count_is_refused(prepared: tuple[Path, list[str]]) -> None:
    root, _ = prepared
    loader = build_shard_loader(root, batch_size=2, num_workers=0)
    with pytest.raises(ConfigError, match="num_workers=2"):
        loader.load_state_dict({"epoch": 0, "batches": 3, "consumed": [4, 2]})
    with pytest.raises(ConfigError, match="not a ShardLoader state"):
        loader.load_state_dict({"epoch": 0, "batch": 3})


def test_a_position_out_of_range_is_refused_unchanged(prepared: tuple[Path, list[str]]) -> None:
    """Issue 17: a tampered state.json (hash recomputed) said consumed 1e12 or -5."""
    root, keys = prepared
    loader = build_shard_loader(root, batch_size=2, num_workers=0)
    with pytest.raises(ConfigError, match=f"the shards hold {len(keys)}"):
        loader.load_state_dict({"epoch": 0, "batches": 1, "consumed": [10**12]})
    for bad in ({"epoch": 0, "batches": 1, "consumed": [-5]},
                {"epoch": -1, "batches": 0, "consumed": [0]}):
        with pytest.raises(ConfigError, match=">= 0"):
            loader.load_state_dict(bad)
    assert loader.state_dict()["consumed"] == [0] and loader.epoch == 0
    loader.load_state_dict({"epoch": 0, "batches": 1, "consumed": [len(keys)]})


def _set_entry(root: Path, shard: int, path: str) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["shards"][shard]["path"] = path
    (root / "manifest.json").write_text(json.dumps(manifest))


def test_a_pipe_entry_in_a_manifest_is_refused_never_run(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "out"
    write_shards(root)
    marker = tmp_path / "ran"
    (root / "evil.sh").write_text(f"touch {marker}\n")
    (root / "pipe:sh evil.sh").write_bytes(b"")  # so that the entry names an existing file
    _set_entry(root, 1, "pipe:sh evil.sh")
    monkeypatch.chdir(root)  # `omni train --shards .`: the folder joined with the entry is it
    with pytest.raises(ConfigError, match=r"manifest.json lists the shard 'pipe:sh evil.sh'"):
        list(build_shard_loader(".", batch_size=4))
    assert not marker.exists()


@pytest.mark.parametrize("entry", [
    "{outside}", "shards/../../elsewhere/shards/shard-000000.tar",
    "../elsewhere/shards/shard-000000.tar",
    "shards\\shard-000001.tar", "file:shards/shard-000001.tar", "shards/sub/x.tar",
])
def test_manifest_entries_outside_the_shards_folder_are_refused(tmp_path: Path,
                                                                entry: str) -> None:
    outside = tmp_path / "elsewhere"
    write_shards(outside)  # a readable tar outside the folder: the loader must not reach it
    root = tmp_path / "out"
    write_shards(root)
    listed = entry.format(outside=outside / "shards" / "shard-000000.tar")
    _set_entry(root, 1, listed)
    with pytest.raises(ConfigError, match="never an absolute path") as raised:
        build_shard_loader(root, batch_size=4)
    assert str(root / "manifest.json") in str(raised.value) and repr(listed) in str(raised.value)


@pytest.mark.parametrize("manifest", [True, False])
def test_a_shard_link_leading_out_of_the_folder_is_refused(tmp_path: Path,
                                                           manifest: bool) -> None:
    write_shards(tmp_path / "elsewhere")
    root = tmp_path / "out"
    write_shards(root, manifest=manifest)
    link = root / "shards" / "shard-000001.tar"
    link.unlink()
    link.symlink_to(tmp_path / "elsewhere" / "shards" / "shard-000001.tar")
    with pytest.raises(ConfigError, match="a link that leads outside"):
        build_shard_loader(root, batch_size=4)
    link.unlink()
    link.symlink_to(root / "shards" / "shard-000000.tar")  # a link within shards/ is fine
    assert len(build_shard_loader(root, batch_size=4).shards.urls) == SHARDS


def test_local_shards_are_never_opened_through_gopen(prepared: tuple[Path, list[str]],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    root, keys = prepared

    def refuse(url: str, *args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"gopen({url!r}) would interpret pipe: names")

    monkeypatch.setattr(wds, "gopen", refuse)
    loader = build_shard_loader(root, batch_size=4, shuffle_shards=False, shuffle_buffer=0)
    assert all_keys(loader) == keys and loader.stats.corrupt_shards == 0


def test_a_compressed_shard_is_corrupt_never_decompressed(tmp_path: Path) -> None:
    keys = write_shards(tmp_path)
    shard = tmp_path / "shards" / "shard-000001.tar"
    shard.write_bytes(gzip.compress(shard.read_bytes()))  # a valid tar.gz under a .tar name
    loader = build_shard_loader(tmp_path, batch_size=4, shuffle_shards=False, shuffle_buffer=0)
    assert all_keys(loader) == keys[:4] + keys[8:]
    assert loader.stats.corrupt_shards == 1
    assert "plain, uncompressed tars" in " | ".join(loader.stats.errors)


def test_a_member_over_its_cap_drops_its_sample_unread(tmp_path: Path) -> None:
    def long_text(shard: int, index: int, members: dict[str, Any]) -> None:
        if (shard, index) == (0, 2):
            members["txt"] = b"a" * (MAX_TEXT_BYTES + 1)  # valid UTF-8, but no window is so long

    keys = write_shards(tmp_path, edit=long_text)
    loader = build_shard_loader(tmp_path, batch_size=4, shuffle_shards=False, shuffle_buffer=0)
    assert all_keys(loader) == keys[:2] + keys[3:]
    assert loader.stats.skipped_samples == loader.stats.dropped == 1
    assert f"member 'txt' declares {MAX_TEXT_BYTES + 1} bytes" in loader.stats.errors[-1]
    assert "skipped unread" in loader.stats.errors[-1]


def test_a_shard_with_more_samples_than_its_manifest_entry_is_flagged(tmp_path: Path) -> None:
    keys = write_shards(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["shards"][1]["samples"] = PER_SHARD - 1
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    loader = build_shard_loader(tmp_path, batch_size=4, shuffle_shards=False, shuffle_buffer=0)
    assert all_keys(loader) == keys  # the extra sample is valid, and used
    assert loader.stats.surplus_shards == 1 and loader.stats.corrupt_shards == 0
    assert f"{PER_SHARD} samples, its manifest entry says {PER_SHARD - 1}" in (
        loader.stats.errors[-1])
    assert loader.stats.dropped == 0


def test_unknown_member_bytes_are_dropped_before_decoding(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(3))

    def extra(shard: int, index: int, members: dict[str, Any]) -> None:
        members["extra.npy"] = buffer.getvalue()  # safe type, but not in the schema

    keys = write_shards(tmp_path, edit=extra)
    loader = build_shard_loader(tmp_path, batch_size=4)
    assert sorted(all_keys(loader)) == sorted(keys)
    assert loader.stats.unsafe_members == len(keys)


@pytest.mark.parametrize("name", [
    "vid_a1b2_000003.json", "vid_a1b2_000003.mel.npy", "dir/sub/key_000001.clip.mp4",
    "no_type", "dir.with.dots/key.txt", "key.", ".hidden", "a/b/.c.d", "K.JPG",
])
def test_member_names_split_as_webdataset_splits_them(name: str) -> None:
    assert split_member_name(name) == wds.tariterators.base_plus_ext(name)


@pytest.mark.parametrize("text", [
    "out/shards/unit-000000-{000000..000003}.tar", "a-{0..2}.tar::b-{x,y}.tar", "plain.tar",
    "pipe:cat s-{00..01}.tar",
])
def test_shard_patterns_expand_as_webdataset_expands_them(text: str) -> None:
    assert expand_urls(text) == wds.shardlists.expand_urls(text)



@pytest.mark.parametrize("mode,options", [
    ("RGB", {"subsampling": 2}), ("RGB", {"subsampling": 1}), ("RGB", {"subsampling": 0}),
    ("RGB", {"progressive": True, "quality": 60}), ("L", {}), ("CMYK", {}),
    ("RGB", {"quality": 100, "subsampling": 0})])
def test_jpegs_decode_to_the_pixels_pil_gave(mode: str, options: dict[str, Any]) -> None:
    """`decode_member` reads JPEGs by TurboJPEG (simplejpeg; CMYK through PIL) to exactly the
    pixels PIL's decode and convert to RGB gave (issue 19), noise and sharp edges included,
    at odd sizes; a truncated JPEG is a corrupt member."""
    from PIL import Image

    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    pixels[:, :20] = (250, 10, 30)  # a saturated block with a sharp chroma edge
    picture = Image.fromarray(pixels).convert(mode)
    out = io.BytesIO()
    picture.save(out, format="JPEG", **options)
    data = out.getvalue()
    with Image.open(io.BytesIO(data)) as image:
        pil = np.array(image.convert("RGB"))
    decoded = decode_member("frame.jpg", data)
    assert decoded.dtype == np.uint8 and decoded.flags.writeable
    assert np.array_equal(decoded, pil)
    rows = np.zeros((2, 37, 53, 3), np.uint8)  # a batch's image: TurboJPEG decodes into its row
    into = decode_member("frame.jpg", data, out=rows[1])
    assert np.array_equal(into, pil) and np.shares_memory(into, rows[1]) == (mode != "CMYK")
    with pytest.raises(CorruptMemberError):
        decode_member("frame.jpg", data[: len(data) // 2])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, None])
def test_a_mel_holding_nan_or_infinity_is_refused(bad: float | None) -> None:
    """A mel with one NaN or infinite value fails validation; float16's extremes and
    subnormals do not (the check reads float16's exponent bits)."""
    members = sample_members(SMALL, 0, 1)
    mel = np.load(io.BytesIO(members["mel.npy"]))
    mel[0, :3] = (65504, -65504, 6e-8)  # largest finite values, a subnormal
    if bad is not None:
        mel[3, 7] = bad
    out = io.BytesIO()
    np.save(out, mel)
    members["mel.npy"] = out.getvalue()
    sample, _ = decode_sample(members)
    problems = validate_sample(sample, None)
    assert problems == ([] if bad is None else ["mel.npy holds NaN or infinite values"])


def test_npy_members_decode_as_np_load_whatever_header_came_before() -> None:
    """Headers parsed once are kept by their bytes: members of other shapes, dtypes and
    orders, in turn and again, decode as `np.load` reads them, on their own or into a row
    of a batch (C order, as the loader's buffers are) of their dtype and shape: prepare
    writes mels in Fortran order."""
    rng = np.random.default_rng(4)
    arrays = [rng.normal(size=(2, 3)).astype(np.float16), rng.normal(size=(3, 2)),
              np.asfortranarray(rng.normal(size=(4, 5)).astype(np.float32))]
    blobs = []
    for array in arrays:
        out = io.BytesIO()
        np.save(out, array)
        blobs.append(out.getvalue())
    for blob in blobs + blobs[::-1]:
        decoded, expected = decode_member("mel.npy", blob), np.load(io.BytesIO(blob))
        assert decoded.dtype == expected.dtype and np.array_equal(decoded, expected)
        assert decoded.flags.writeable
        rows = np.zeros((2, *expected.shape), expected.dtype)
        into = decode_member("mel.npy", blob, out=rows[1])
        assert np.shares_memory(into, rows[1]) and np.array_equal(into, expected)



def test_clips_decode_alike_through_the_kept_decoder_whatever_came_before() -> None:
    """Each thread keeps one H.264 decoder across clips: a run of clips of two sizes (other
    parameter sets), one with damaged bytes among them, decodes each clip as a decoder opened
    for it alone does (PyAV's `container.decode`)."""
    rng = np.random.default_rng(5)
    clips = [encode_clip(rng.integers(0, 256, (6, size, size, 3), dtype=np.uint8), "mp4", 3)
             for size in (16, 16, 32, 16, 32)]
    damaged = bytearray(clips[1])
    damaged[len(damaged) // 2:len(damaged) // 2 + 64] = bytes(64)
    for data in (clips[0], bytes(damaged), *clips[1:], clips[0]):
        with av.open(io.BytesIO(data), "r", format="mp4") as container:
            alone = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
        try:
            kept = decode_member("clip.mp4", data)
        except CorruptMemberError:
            assert data == bytes(damaged)
            continue
        assert np.array_equal(kept, np.stack(alone))
