"""Shard schema v1: encode/decode round trips, keys, validation, and the safe decoder."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import simplejpeg
from PIL import Image

from pipeline.config import SCHEMA_VERSION, PrepareConfig
from pipeline.media.discover import video_id
from pipeline.media.h264 import cpu_flags, deterministic_params
from pipeline.shards.decode import (
    MAX_MEMBER_BYTES,
    MAX_TEXT_BYTES,
    CorruptMemberError,
    UnsafeMemberError,
    decode_member,
    decode_sample,
    member_cap,
    oversized_member,
)
from pipeline.shards.encode import encode_clip, encode_sample
from pipeline.shards.schema import (
    CLIP_ENCODINGS,
    DEFAULT_CLIP_ENCODING,
    SampleMeta,
    expected_from_config,
    sample_key,
)
from pipeline.shards.validate import validate_sample

CONFIG = PrepareConfig()


def moving_pattern(frames: int = 16, size: int = 112) -> np.ndarray:
    """Smooth gradients plus a wave moving 3 px per frame: (T, S, S, 3) uint8."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    clip = np.empty((frames, size, size, 3), np.float32)  # (T, S, S, 3)
    for t in range(frames):
        clip[t, ..., 0] = 40 + 1.5 * x
        clip[t, ..., 1] = 40 + 1.5 * y
        clip[t, ..., 2] = 128 + 80 * np.sin((x + 3 * t) / 9) * np.cos(y / 13)
    return clip.round().astype(np.uint8)


def make_meta(config: PrepareConfig = CONFIG, clip_index: int = 3, encoding: str = "npy",
              **changes: Any) -> SampleMeta:
    start = float(clip_index) * config.clip_stride
    values: dict[str, Any] = dict(
        source="talks/intro.mp4", video_id=video_id("talks/intro.mp4"), clip_index=clip_index,
        start=start, end=start + config.clip_duration, rotation=90, has_audio=True,
        transcript_source="srt", transcript_timed=True, clip_encoding=encoding,
    )
    values.update(changes)
    return SampleMeta.build(config, **values)


def make_arrays(config: PrepareConfig = CONFIG, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "mel": rng.uniform(-13, 5, (config.n_mels, config.audio_frames)).astype(np.float16),
        "image": rng.integers(0, 256, (config.image_size, config.image_size, 3), np.uint8),
        "frames": moving_pattern(config.video_frames, config.video_size),
    }


def decoded_sample(encoding: str = "npy") -> dict[str, Any]:
    """A valid sample in decoded form, for validate_sample to find fault with once edited."""
    meta = make_meta(encoding=encoding)
    arrays = make_arrays()
    return {"__key__": meta.key, "json": meta.to_dict(), "mel.npy": arrays["mel"],
            "frame.jpg": arrays["image"], f"clip.{encoding}": arrays["frames"],
            "txt": "hello"}


def encode(encoding: str, text: str = "hello wörld") -> tuple[dict[str, Any], SampleMeta]:
    meta = make_meta(encoding=encoding)
    arrays = make_arrays()
    members = encode_sample(meta.key, meta, arrays["mel"], arrays["image"], arrays["frames"],
                            text, CONFIG)
    return members, meta


# --------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("encoding", CLIP_ENCODINGS)
def test_encode_decode_round_trip(encoding: str) -> None:
    members, meta = encode(encoding)
    assert set(members) == {"__key__", "json", "mel.npy", "frame.jpg", f"clip.{encoding}", "txt"}
    assert isinstance(members["__key__"], str)
    assert all(isinstance(v, bytes) for k, v in members.items() if k != "__key__")

    sample, dropped = decode_sample(members)
    assert dropped == []
    assert validate_sample(sample, expected_from_config(CONFIG)) == []
    arrays = make_arrays()
    assert sample["json"] == json.loads(json.dumps(meta.to_dict()))
    assert sample["txt"] == "hello wörld"
    assert sample["mel.npy"].dtype == np.float16
    np.testing.assert_array_equal(sample["mel.npy"], arrays["mel"])
    image = sample["frame.jpg"]
    assert image.dtype == np.uint8 and image.shape == (224, 224, 3)
    clip = sample[f"clip.{encoding}"]
    assert clip.dtype == np.uint8 and clip.shape == (16, 112, 112, 3)
    if encoding == "npy":
        np.testing.assert_array_equal(clip, arrays["frames"])


def test_mp4_clip_error_is_small_and_frames_stay_in_order() -> None:
    source = moving_pattern()
    clip = decode_member("clip.mp4", encode_clip(source, "mp4", CONFIG.fps))
    assert clip.shape == source.shape and clip.dtype == np.uint8
    error = np.abs(clip.astype(np.float32) - source.astype(np.float32))  # (T, H, W, 3)
    assert error.mean() < 3.0  # grey levels; about 2 at CRF 18 on this smooth pattern
    for t in range(len(source)):
        distances = np.abs(clip[t].astype(np.float32) - source.astype(np.float32)).mean(
            axis=(1, 2, 3))  # (T,)
        assert int(distances.argmin()) == t


def test_mp4_encoding_is_deterministic() -> None:
    """The same clip gives the same bytes whatever the heap holds: x264's AVX-512 code read
    uninitialised memory at 112 px and gave a different clip on most calls (pipeline.media.h264)."""
    source = moving_pattern()
    first = encode_clip(source, "mp4", 8)
    rng = np.random.default_rng(0)
    for _ in range(6):
        litter = [rng.integers(0, 256, int(rng.integers(1_000, 200_000)), np.uint8).tobytes()
                  for _ in range(20)]  # freed below: the next encoder's buffers reuse them
        del litter
        assert encode_clip(source, "mp4", 8) == first


def test_x264_leaves_out_only_avx512_and_only_where_the_cpu_has_it(tmp_path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n")
    flags = cpu_flags(cpuinfo)
    assert {"avx2", "avx512f"} <= flags
    (params,) = deterministic_params(flags).values()
    assert params.startswith("asm=") and "AVX2" in params and "AVX512" not in params
    assert deterministic_params(frozenset({"sse2", "avx2"})) == {}
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_mp4_refuses_odd_frame_sizes() -> None:
    with pytest.raises(ValueError, match="even"):
        encode_clip(np.zeros((4, 33, 33, 3), np.uint8), "mp4", 8)


@pytest.mark.parametrize(("frames", "preset"), [(48, "medium"), (8, "ultrafast")])
def test_mp4_clips_longer_than_the_lookahead_or_fast_presets_encode_every_frame(
        frames: int, preset: str) -> None:
    """x264 hands packets out before the last frame once its lookahead is full (48 frames at
    the default preset, 8 at ultrafast): the muxer then re-times the stream, and frames must
    keep their 1/fps stamps (they reached x264 out of order and muxing failed)."""
    clip = np.random.default_rng(0).integers(0, 256, (frames, 16, 16, 3), dtype=np.uint8)
    decoded = decode_member("clip.mp4", encode_clip(clip, "mp4", 8, preset=preset))
    assert decoded.shape == clip.shape


def test_default_clip_encoding_is_the_documented_mp4_and_round_trips() -> None:
    """A sample whose meta names no encoding stores `clip.mp4` (the schema table's member),
    and what it stores decodes and validates as any sample the loader reads."""
    meta = SampleMeta.build(CONFIG, source="a.mp4", video_id=video_id("a.mp4"), clip_index=0,
                            start=0.0, end=CONFIG.clip_duration, rotation=0, has_audio=True,
                            transcript_source="none", transcript_timed=True)
    arrays = make_arrays()
    members = encode_sample(meta.key, meta, arrays["mel"], arrays["image"], arrays["frames"],
                            "", CONFIG)
    assert meta.clip_encoding == DEFAULT_CLIP_ENCODING == "mp4"
    assert [name for name in members if name.startswith("clip.")] == ["clip.mp4"]
    sample, dropped = decode_sample(members)
    assert dropped == []
    assert validate_sample(sample, expected_from_config(CONFIG)) == []
    assert sample["clip.mp4"].shape == arrays["frames"].shape


def test_jpeg_quality_follows_the_config() -> None:
    meta = make_meta()
    arrays = make_arrays()
    sizes = []
    for quality in (30, 95):
        config = PrepareConfig(jpeg_quality=quality)
        members = encode_sample(meta.key, meta, arrays["mel"], arrays["image"],
                                arrays["frames"], "", config)
        sizes.append(len(members["frame.jpg"]))
    assert sizes[0] < sizes[1]


def test_sample_meta_round_trips_through_json() -> None:
    meta = make_meta()
    assert SampleMeta.from_dict(json.loads(json.dumps(meta.to_dict()))) == meta
    assert meta.mel.f_max == CONFIG.sample_rate / 2  # resolved Nyquist, not None


# --------------------------------------------------------------------------- keys
def test_keys_have_six_digits_and_no_dots() -> None:
    vid = video_id("lectures/week.1/intro v2.final.mp4")
    key = sample_key(vid, 7)
    assert key == f"{vid}_000007"
    assert "." not in key and "/" not in key
    members, _ = encode("npy")
    assert "." not in members["__key__"]


def test_sample_key_refuses_ids_that_would_break_webdataset() -> None:
    with pytest.raises(ValueError, match="video_id"):
        sample_key("intro.final", 0)
    with pytest.raises(ValueError, match="clip_index"):
        sample_key("intro", -1)


# --------------------------------------------------------------------------- validation
def problems_after(edit: Any, encoding: str = "npy",
                   expected: dict[str, Any] | None = None) -> list[str]:
    sample = decoded_sample(encoding)
    edit(sample)
    return validate_sample(sample, expected)


def test_valid_sample_has_no_problems() -> None:
    assert validate_sample(decoded_sample(), expected_from_config(CONFIG)) == []


@pytest.mark.parametrize("member", ["json", "mel.npy", "frame.jpg", "txt", "clip.npy"])
def test_missing_member_is_reported(member: str) -> None:
    problems = problems_after(lambda s: s.pop(member))
    assert any("missing" in p and member.split(".")[0] in p for p in problems), problems


def test_wrong_dtype_and_shape_are_reported() -> None:
    def edit(sample: dict[str, Any]) -> None:
        sample["mel.npy"] = sample["mel.npy"].astype(np.float32)
        sample["clip.npy"] = sample["clip.npy"][:15]
        sample["frame.jpg"] = sample["frame.jpg"][:, :200]

    problems = " | ".join(problems_after(edit))
    assert "mel.npy is float32" in problems
    assert "clip.npy is uint8 (15, 112, 112, 3)" in problems
    assert "frame.jpg is uint8 (224, 200, 3)" in problems


def test_key_with_a_dot_is_reported() -> None:
    def edit(sample: dict[str, Any]) -> None:
        sample["__key__"] = "intro.v2_000003"

    problems = problems_after(edit)
    assert any("contains a dot" in p for p in problems), problems


def test_schema_version_mismatch_is_reported() -> None:
    problems = problems_after(lambda s: s["json"].update(schema_version=SCHEMA_VERSION + 1))
    assert any("schema_version" in p for p in problems), problems


def test_inconsistent_times_are_reported() -> None:
    problems = problems_after(lambda s: s["json"].update(end=s["json"]["start"] + 2.5))
    assert any("frames / fps" in p for p in problems), problems
    problems = problems_after(lambda s: s["json"].update(end=s["json"]["start"] - 1))
    assert any("start < end" in p for p in problems), problems


def test_metadata_that_disagrees_with_the_manifest_config_is_reported() -> None:
    expected = expected_from_config(PrepareConfig(image_size=256))
    problems = problems_after(lambda s: None, expected=expected)
    assert any("image_size is 224" in p and "256" in p for p in problems), problems


def test_clip_member_must_match_the_encoding_in_json() -> None:
    problems = problems_after(lambda s: s["json"].update(clip_encoding="mp4"))
    assert any("clip_encoding" in p for p in problems), problems


def test_extra_and_duplicate_clip_members_are_reported() -> None:
    def edit(sample: dict[str, Any]) -> None:
        sample["clip.mp4"] = sample["clip.npy"]
        sample["evil.pyd"] = b"..."

    problems = " | ".join(problems_after(edit))
    assert "several clip members" in problems
    assert "unexpected member 'evil.pyd'" in problems


def test_broken_json_fields_are_reported() -> None:
    problems = problems_after(lambda s: s["json"].pop("fps"))
    assert any("'fps' is missing" in p for p in problems), problems
    problems = problems_after(lambda s: s["json"].update(clip_index=True))
    assert any("clip_index" in p for p in problems), problems


def test_text_without_a_transcript_source_is_reported() -> None:
    problems = problems_after(lambda s: s["json"].update(transcript_source="none"))
    assert any("transcript_source is 'none'" in p for p in problems), problems


def test_encode_sample_refuses_what_the_loader_would_reject() -> None:
    meta = make_meta()
    arrays = make_arrays()
    with pytest.raises(ValueError, match="mel.npy is float32"):
        encode_sample(meta.key, meta, arrays["mel"].astype(np.float32), arrays["image"],
                      arrays["frames"], "", CONFIG)
    with pytest.raises(ValueError, match="differs from the sample key"):
        encode_sample("other_000001", meta, arrays["mel"], arrays["image"], arrays["frames"],
                      "", CONFIG)


# --------------------------------------------------------------------------- safe decoding
class _Touch:
    """Unpickling this object creates `path`: proof that a member was deserialised."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.path,))


def test_pickle_payload_works_when_unpickled(tmp_path: Path) -> None:
    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps(_Touch(proof)))
    assert proof.exists()  # so the marker tests below would notice a deserialisation


@pytest.mark.parametrize("name", ["evil.pyd", "evil.pickle", "model.pth", "model.pt",
                                  "weights.PTH", "data.bin", "noextension"])
def test_decode_member_never_deserialises_unsafe_types(tmp_path: Path, name: str) -> None:
    marker = tmp_path / "marker"
    with pytest.raises(UnsafeMemberError, match="never deserialised"):
        decode_member(name, pickle.dumps(_Touch(marker)))
    assert not marker.exists()


def test_npy_holding_pickled_objects_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    buffer = io.BytesIO()
    np.save(buffer, np.array([_Touch(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(CorruptMemberError):
        decode_member("mel.npy", buffer.getvalue())
    assert not marker.exists()


def test_npz_and_pickle_bytes_under_an_npy_name_are_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, a=np.zeros(3))
    with pytest.raises(CorruptMemberError, match="magic"):
        decode_member("mel.npy", buffer.getvalue())
    marker = tmp_path / "marker"
    with pytest.raises(CorruptMemberError):
        decode_member("mel.npy", pickle.dumps(_Touch(marker)))
    assert not marker.exists()


def test_images_decode_only_as_the_format_their_name_says() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buffer, format="PNG")
    assert decode_member("x.png", buffer.getvalue()).shape == (8, 8, 3)
    with pytest.raises(CorruptMemberError):
        decode_member("frame.jpg", buffer.getvalue())


@pytest.mark.parametrize(("name", "data"), [
    ("clip.mp4", b"\x00\x00\x00\x18ftypmp42 not really a video"),
    ("frame.jpg", b"\xff\xd8\xff garbage"),
    ("json", b"[1, 2, 3]"),
    ("json", b"{not json"),
    ("txt", b"\xff\xfe\xfa"),
])
def test_corrupt_members_raise_corrupt_member_error(name: str, data: bytes) -> None:
    with pytest.raises(CorruptMemberError, match=name):
        decode_member(name, data)


def test_decode_sample_drops_unknown_members_unread(tmp_path: Path) -> None:
    members, _ = encode("npy")
    marker = tmp_path / "marker"
    members["evil.pyd"] = pickle.dumps(_Touch(marker))
    members["clip.pickle"] = pickle.dumps(_Touch(marker))
    sample, dropped = decode_sample(members)
    assert sorted(dropped) == ["clip.pickle", "evil.pyd"]
    assert "evil.pyd" not in sample and not marker.exists()


# --------------------------------------------------------------------------- size bounds
SMALL = PrepareConfig(clip_duration=0.5, fps=8, video_size=32, image_size=32, n_mels=8)


def test_mp4_of_another_frame_size_is_refused_before_decoding() -> None:
    clip = encode_clip(np.zeros((4, 64, 64, 3), np.uint8), "mp4", 8)  # the set's are 32x32
    with pytest.raises(CorruptMemberError, match="frames of 64x64, the shard set's clips are "
                                                 "32x32"):
        decode_member("clip.mp4", clip, expected_from_config(SMALL))


def test_mp4_with_more_frames_than_expected_is_refused() -> None:
    clip = encode_clip(np.zeros((6, 32, 32, 3), np.uint8), "mp4", 8)  # the set's hold 4
    with pytest.raises(CorruptMemberError, match="6 frames, more than 4"):
        decode_member("clip.mp4", clip, expected_from_config(SMALL))
    assert decode_member("clip.mp4", clip).shape == (6, 32, 32, 3)  # sizes unknown: bounded


def test_image_of_another_size_is_refused_before_its_pixels(monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48)).save(buffer, format="JPEG")

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("pixels decoded")

    monkeypatch.setattr(Image.Image, "convert", refuse)
    monkeypatch.setattr(simplejpeg, "decode_jpeg", refuse)
    with pytest.raises(CorruptMemberError, match="image of 64x48, the shard set's images are "
                                                 "32x32"):
        decode_member("frame.jpg", buffer.getvalue(), expected_from_config(SMALL))
    Image.new("RGB", (32, 32)).save(buffer := io.BytesIO(), format="JPEG")
    with pytest.raises(CorruptMemberError, match="pixels decoded"):  # the right size decodes
        decode_member("frame.jpg", buffer.getvalue(), expected_from_config(SMALL))


def test_npy_declaring_a_huge_array_is_refused_unallocated() -> None:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "|u1", "fortran_order": False, "shape": (10**6, 10**6)})
    with pytest.raises(CorruptMemberError, match="declares a uint8 array of shape"):
        decode_member("clip.npy", header.getvalue())


def test_without_expected_sizes_a_sample_is_decoded_to_those_of_its_json() -> None:
    meta = make_meta(SMALL, encoding="mp4")
    members = encode_sample(meta.key, meta, np.zeros((8, SMALL.audio_frames), np.float16),
                            np.zeros((32, 32, 3), np.uint8), np.zeros((4, 32, 32, 3), np.uint8),
                            "", SMALL)
    assert decode_sample(members)[0]["clip.mp4"].shape == (4, 32, 32, 3)
    members["clip.mp4"] = encode_clip(np.zeros((4, 64, 64, 3), np.uint8), "mp4", 8)
    with pytest.raises(CorruptMemberError, match="frames of 64x64"):
        decode_sample(members)
    del members["json"]
    with pytest.raises(CorruptMemberError, match="missing member 'json': its media members"):
        decode_sample(members)


def test_member_caps_follow_the_expected_sizes() -> None:
    expected = expected_from_config(SMALL)
    assert member_cap("txt", expected) == member_cap("json", None) == MAX_TEXT_BYTES
    assert member_cap("clip.mp4", None) == MAX_MEMBER_BYTES
    raw_clip = 4 * 32 * 32 * 3
    assert raw_clip < member_cap("clip.mp4", expected) < 3 * raw_clip + 2**17
    assert member_cap("mel.npy", expected) > 8 * SMALL.audio_frames * 2  # float16
    huge = expected_from_config(PrepareConfig(video_size=10**5))
    assert member_cap("clip.npy", huge) == MAX_MEMBER_BYTES  # whatever a manifest claims
    assert oversized_member("txt", MAX_TEXT_BYTES, None) is None
    reason = oversized_member("txt", MAX_TEXT_BYTES + 1, None)
    assert reason is not None and f"declares {MAX_TEXT_BYTES + 1} bytes" in reason


@pytest.mark.parametrize("array", [
    np.arange(24, dtype=np.float16).reshape(2, 3, 4),
    np.asfortranarray(np.arange(12, dtype=np.uint8).reshape(3, 4)),
    np.full((), 1.5, np.float16)])
@pytest.mark.parametrize("version", [(1, 0), (2, 0)])
def test_npy_members_decode_as_np_load(array: np.ndarray, version: tuple[int, int]) -> None:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, version=version)
    decoded = decode_member("mel.npy", buffer.getvalue())
    loaded = np.load(io.BytesIO(buffer.getvalue()), allow_pickle=False)
    assert decoded.dtype == loaded.dtype and decoded.shape == loaded.shape
    assert decoded.flags.writeable and decoded.flags.owndata
    np.testing.assert_array_equal(decoded, loaded)
    with pytest.raises(CorruptMemberError):
        decode_member("mel.npy", buffer.getvalue()[:-1])  # cut short of what it declares
