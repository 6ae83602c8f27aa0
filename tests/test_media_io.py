"""Inputs and outputs of `omni generate`: files in, exactly what prepare stores; arrays out,
files and sound.

Every input is checked against the prepare pipeline itself (`iter_windows`, `log_mel`) on
tiny media written here, so "what the model sees at inference" cannot drift from training.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import subprocess
import threading
import wave
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import webdataset as wds
from media import (
    counter_picture,
    i420_frames,
    make_audio_only,
    make_oversized_video,
    make_video,
    random_bytes_file,
    stripe_side,
    tone_signal,
    waves_picture,
    write_png_header,
)
from PIL import Image, ImageFile

from pipeline.config import DECODERS, PrepareConfig
from pipeline.errors import ConfigError, MediaError
from pipeline.generate.inputs import (
    SampleArrays,
    guess_modality,
    load_audio_file,
    load_image_file,
    load_input,
    load_text_file,
    load_video_window,
    sample_arrays_batch,
    text_input,
)
from pipeline.generate.outputs import atomic_output, write_image, write_text, write_video, write_wav
from pipeline.loader.batches import collate
from pipeline.loader.samples import sample_tensors
from pipeline.loader.shard_loader import build_shard_loader
from pipeline.media import decode_pyav
from pipeline.media import probe as probe_pyav
from pipeline.media.audio import log_mel, mel_to_waveform
from pipeline.media.decode import iter_windows
from pipeline.media.ffmpeg_bin import ffmpeg_binary
from pipeline.media.frames import frame_size_problem
from pipeline.media.windows import DecodeStats, Window
from pipeline.normalize import model_to_mel, pixels_to_unit, to_model_units, unit_to_pixels
from pipeline.shards.decode import decode_sample
from pipeline.shards.encode import encode_clip, encode_sample
from pipeline.shards.schema import MEL_CENTER, MEL_SCALE, SampleMeta

CONFIG = PrepareConfig()
# Re-analysed log-mel of Griffin-Lim output at 32 iterations, mean |difference| (measured by
# bench/griffin_lim.py: 0.17 chirp, 0.11 noise; 0.17 for a tone on the bins within 40 dB of
# its peak, where the bins it leaves near silence dominate the mean over all of them).
GL_CHIRP_BOUND, GL_NOISE_BOUND, GL_TONE_LOUD_BOUND = 0.3, 0.2, 0.3


def ffmpeg_run(*args: str) -> None:
    subprocess.run([ffmpeg_binary(), "-nostdin", "-v", "error", "-y", *args], check=True)


def windows_of(path: Path, config: PrepareConfig = CONFIG) -> list[Window]:
    return list(iter_windows(path, config))


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media_io")


@pytest.fixture(scope="module")
def video(media_dir: Path) -> Path:
    """4 s, 24 fps, 440 Hz in odd seconds, with an SRT sidecar."""
    path = make_video(media_dir / "clip.mp4", duration=4.0, fps=24).path
    (media_dir / "clip.srt").write_text(
        "1\n00:00:00,500 --> 00:00:01,500\nfirst line\n\n"
        "2\n00:00:02,500 --> 00:00:03,500\nsecond line\n", encoding="utf-8")
    return path


# -- modality ------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "modality"), [
    ("a.mp4", "video"), ("b.MKV", "video"), ("c.webm", "video"), ("d.wav", "audio"),
    ("e.FLAC", "audio"), ("f.mp3", "audio"), ("g.ogg", "audio"), ("h.m4a", "audio"),
    ("i.opus", "audio"), ("j.aac", "audio"), ("k.png", "image"), ("l.JPG", "image"),
    ("m.jpeg", "image"), ("n.webp", "image"), ("o.txt", "text"),
])
def test_modality_is_guessed_from_the_extension(name: str, modality: str) -> None:
    assert guess_modality(name) == modality


@pytest.mark.parametrize("name", ["notes.docx", "README"])
def test_unknown_extension_lists_the_known_ones(name: str) -> None:
    with pytest.raises(MediaError) as info:
        guess_modality(name)
    message = str(info.value)
    for text in (name, ".wav", ".mp4", ".png", ".txt", "--from-modality"):
        assert text in message
    assert "\n" not in message


# -- video -----------------------------------------------------------------------------------


@pytest.mark.parametrize("start", [0.0, 1.0])
def test_video_window_is_the_prepare_window(video: Path, start: float) -> None:
    window = windows_of(video)[round(start / CONFIG.clip_stride)]
    arrays = load_video_window(video, CONFIG, start)
    assert arrays.start == window.start == start
    np.testing.assert_array_equal(arrays.frames, window.frames)
    np.testing.assert_array_equal(arrays.image, window.image)
    np.testing.assert_array_equal(arrays.mel, log_mel(window.audio, CONFIG))
    assert arrays.mel.dtype == np.float16
    assert arrays.text == ("first line" if start == 0 else "first line second line")
    assert arrays.notes == ()


def test_video_window_with_the_ffmpeg_backend(video: Path) -> None:
    config = dataclasses.replace(CONFIG, decoder="ffmpeg")
    window = windows_of(video, config)[1]
    arrays = load_video_window(video, config, 1.0)
    np.testing.assert_array_equal(arrays.frames, window.frames)
    np.testing.assert_array_equal(arrays.mel, log_mel(window.audio, config))


def test_a_start_between_grid_frames_is_rounded_and_said(video: Path) -> None:
    arrays = load_video_window(video, CONFIG, 1.04)  # 1.04 * 8 fps = 8.32 -> frame 8
    np.testing.assert_array_equal(arrays.frames, windows_of(video)[1].frames)
    assert arrays.start == 1.0
    assert arrays.notes == ("start 1.04 s rounded to 1 s, the nearest frame of the 8 fps grid",)


def test_a_window_past_the_end_names_the_length(video: Path) -> None:
    with pytest.raises(MediaError) as info:
        load_video_window(video, CONFIG, 2.5)
    message = str(info.value)
    assert "4.00 s long" in message and "at most 2 s" in message
    with pytest.raises(MediaError, match="0 s or more"):
        load_video_window(video, CONFIG, -1.0)


def test_video_without_audio_gets_the_silent_mel(media_dir: Path) -> None:
    path = make_video(media_dir / "mute.mp4", duration=2.0, fps=8, size=(32, 32),
                      audio=None).path
    arrays = load_video_window(path, CONFIG)
    assert np.all(arrays.mel == np.float16(math.log(1e-6)))
    assert arrays.text == "" and "no audio stream" in arrays.notes[0]


def test_gaps_between_windows_are_not_buffered(media_dir: Path) -> None:
    # A stride longer than a clip (what a late start uses) must not hold the gap in memory.
    path = make_video(media_dir / "long.mp4", duration=12.0, fps=8, size=(32, 32),
                      sample_rate=16000).path
    short = dataclasses.replace(CONFIG, clip_stride=1.0)
    gapped = dataclasses.replace(CONFIG, clip_stride=9.0)
    stats = DecodeStats()
    late = list(iter_windows(path, gapped, stats))[1]
    assert late.start == 9.0
    np.testing.assert_array_equal(late.frames, windows_of(path, short)[9].frames)
    np.testing.assert_array_equal(late.audio, windows_of(path, short)[9].audio)
    assert stats.peak_buffered_frames <= CONFIG.video_frames + 1
    assert stats.peak_buffered_samples <= 2 * CONFIG.samples_per_clip


# -- audio -----------------------------------------------------------------------------------


def write_pcm(path: Path, signal: np.ndarray, sample_rate: int) -> Path:
    """(N, C) float samples as 16-bit PCM WAV."""
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(signal.shape[1])
        handle.setsampwidth(2)
        handle.setframerate(sample_rate)
        handle.writeframes(np.round(signal * 32767).astype("<i2").tobytes())
    return path


def test_wav_at_44k_stereo_gives_the_mel_prepare_gives(media_dir: Path) -> None:
    # The same PCM stream as a .wav and inside a video: prepare's window must match exactly.
    tone = tone_signal(4 * 44100, 44100, 440.0)  # (N,)
    wav = write_pcm(media_dir / "tone.wav", np.stack([tone, 0.5 * tone], axis=1), 44100)
    silent = make_video(media_dir / "picture.mkv", duration=4.0, fps=8, size=(32, 32),
                        audio=None).path
    muxed = media_dir / "with_wav.mkv"
    ffmpeg_run("-i", str(silent), "-i", str(wav), "-map", "0:v", "-map", "1:a", "-c", "copy",
               str(muxed))
    for start in (0.0, 1.0):
        arrays = load_audio_file(wav, CONFIG, start)
        assert arrays.mel.shape == (CONFIG.n_mels, CONFIG.audio_frames)
        assert arrays.frames is None and arrays.image is None and arrays.text is None
        window = windows_of(muxed)[round(start)]
        np.testing.assert_array_equal(arrays.mel, log_mel(window.audio, CONFIG))


def test_compressed_audio_is_close_to_the_same_sound_in_a_video(media_dir: Path) -> None:
    m4a = make_audio_only(media_dir / "tone.m4a", duration=4.0, channels=2).path
    mp4 = make_video(media_dir / "tone.mp4", duration=4.0, fps=8, size=(32, 32),
                     channels=2).path
    arrays = load_input(m4a, CONFIG, start=1.0)
    assert arrays.mel.shape == (CONFIG.n_mels, CONFIG.audio_frames)
    # The same AAC encoder input gives the same packets in both files: equal, not just close.
    np.testing.assert_array_equal(arrays.mel, log_mel(windows_of(mp4)[1].audio, CONFIG))


def test_audio_padded_after_the_end_and_refused_past_it(media_dir: Path) -> None:
    noise = 0.1 * np.random.default_rng(0).standard_normal((16000, 1))  # 1 s
    wav = write_pcm(media_dir / "short.wav", noise, 16000)
    arrays = load_audio_file(wav, CONFIG)
    silence = np.float16(math.log(1e-6))
    assert np.all(arrays.mel[:, 102:] == silence)  # frame t spans samples 160 t +- 200
    assert np.all(arrays.mel[:, :99].mean(axis=0) > silence + 5)
    with pytest.raises(MediaError, match=r"1\.00 s long; a start of 1\.5 s is past its end"):
        load_audio_file(wav, CONFIG, 1.5)


def test_unusable_audio_files_say_why(media_dir: Path) -> None:
    mute = make_video(media_dir / "mute2.mp4", duration=1.0, fps=8, size=(32, 32),
                      audio=None).path
    with pytest.raises(MediaError, match="has no audio stream"):
        load_audio_file(mute, CONFIG)
    (media_dir / "empty.wav").write_bytes(b"")
    with pytest.raises(MediaError, match=r"empty file \(0 bytes\)"):
        load_audio_file(media_dir / "empty.wav", CONFIG)
    noise = random_bytes_file(media_dir / "noise.mp3", 5000)
    with pytest.raises(MediaError, match="not a readable media file|no decodable audio"):
        load_audio_file(noise, CONFIG)


# -- pictures --------------------------------------------------------------------------------


def png_video(path: Path, picture: np.ndarray, seconds: float, fps: int) -> Path:
    """`picture` repeated for `seconds`, stored losslessly as RGB (PNG frames in QuickTime)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("png", rate=fps)
        stream.width, stream.height, stream.pix_fmt = picture.shape[1], picture.shape[0], "rgb24"
        for index in range(round(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


@pytest.mark.parametrize("size", [(160, 120), (101, 157)])
def test_a_picture_gives_the_image_prepare_makes_of_a_lossless_video(
        media_dir: Path, size: tuple[int, int]) -> None:
    picture = waves_picture(0.3, *size)  # (H, W, 3)
    still = media_dir / f"still{size[0]}.png"
    Image.fromarray(picture).save(still)
    window = windows_of(png_video(media_dir / f"still{size[0]}.mov", picture, 2.0, 8))[0]
    arrays = load_image_file(still, CONFIG)
    assert arrays.image.shape == (CONFIG.image_size, CONFIG.image_size, 3)
    np.testing.assert_array_equal(arrays.image, window.image)
    assert arrays.frames is None and arrays.mel is None and arrays.text is None


def test_picture_round_trip_is_exact(media_dir: Path) -> None:
    image = waves_picture(1.0, CONFIG.image_size, CONFIG.image_size)
    path = write_image(media_dir / "round.png", image)
    np.testing.assert_array_equal(load_image_file(path, CONFIG).image, image)


def test_exif_orientation_is_honoured(media_dir: Path) -> None:
    upright = counter_picture(0, 160, 120)  # stripe on top
    stored = np.ascontiguousarray(np.rot90(upright, k=1))  # as a camera held sideways stores it
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    path = media_dir / "sideways.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    assert stripe_side(load_image_file(path, CONFIG).image) == "top"


def test_unreadable_picture_says_so(media_dir: Path) -> None:
    with pytest.raises(MediaError, match="cannot read picture"):
        load_image_file(random_bytes_file(media_dir / "bad.png", 300), CONFIG)
    with pytest.raises(MediaError, match="no such picture"):
        load_image_file(media_dir / "missing.png", CONFIG)


# -- sizes: pictures and videos are refused from the size they state ------------------------


def test_the_frame_cap_allows_8k_and_refuses_16000_squared() -> None:
    assert frame_size_problem(7680, 4320, 48, "rgb48le frame") is None  # 199 MB
    assert frame_size_problem(7680, 4320, 12, "yuv420p frame") is None
    assert frame_size_problem(16000, 16000, 8, "gray frame") is not None  # 256 MB
    assert frame_size_problem(13300, 13300, 24, "RGB picture") is not None


def test_a_picture_stating_a_huge_size_is_refused_before_decoding(media_dir: Path,
                                                                   monkeypatch) -> None:
    path = write_png_header(media_dir / "huge.png", 13300, 13300)
    assert path.stat().st_size < 1000

    def no_decoding(self: ImageFile.ImageFile) -> None:
        raise AssertionError("the picture was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(MediaError, match=r"huge.png: a 13300x13300 RGB picture takes 531 MB "
                                         r"decoded, more than the 200 MB"):
        load_input(path, CONFIG)


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("suffix,reason", [
    (".mpg", "a 16000x16000 yuv420p frame takes 384 MB decoded"),
    (".mkv", "a 16000x16000 frame of unknown pixel format takes 256 MB decoded"),
    (".ts", "states no picture size"),
])
def test_a_video_stating_a_huge_size_is_refused_before_decoding(
        media_dir: Path, monkeypatch, decoder: str, suffix: str, reason: str) -> None:
    path = make_oversized_video(media_dir / f"huge-{decoder}{suffix}")
    assert path.stat().st_size < 20_000

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("a frame was decoded")

    # Every frame the pipeline decodes in-process comes through this loop.
    for module in (probe_pyav, decode_pyav):
        monkeypatch.setattr(module, "decoded_frames", no_decoding)
    with pytest.raises(MediaError, match=f"cannot read video .*{reason}"):
        load_input(path, dataclasses.replace(CONFIG, decoder=decoder))


# -- text ------------------------------------------------------------------------------------


def test_text_is_collapsed_like_transcript_windows(media_dir: Path) -> None:
    assert text_input("  a cat\n on\tthe mat ").text == "a cat on the mat"
    path = media_dir / "prompt.txt"
    path.write_bytes("\ufeffcafé  — 5 €\r\n".encode())
    arrays = load_text_file(path)
    assert arrays.text == "café — 5 €" and arrays.source == str(path)
    with pytest.raises(MediaError, match="only applies to video and audio"):
        load_input(path, CONFIG, start=1.0)


# -- tensors ---------------------------------------------------------------------------------


def test_sample_tensors_and_collate_equal_the_loader(tmp_path: Path) -> None:
    config = PrepareConfig(clip_duration=1.0, fps=4, video_size=32, image_size=64, n_mels=16)
    rng = np.random.default_rng(0)
    meta = SampleMeta.build(config, source="v.mp4", video_id="v_0123456789abcdef",
                            clip_index=0, start=0.0, end=1.0, rotation=0, has_audio=True,
                            transcript_source="srt", transcript_timed=True, clip_encoding="npy")
    frames = rng.integers(0, 256, (config.video_frames, 32, 32, 3), dtype=np.uint8)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    mel = rng.uniform(-13.8, 8.8, (16, config.audio_frames)).astype(np.float16)
    members = encode_sample(meta.key, meta, mel, image, frames, "a cat", config, "npy")
    (tmp_path / "shards").mkdir()
    with wds.TarWriter(str(tmp_path / "shards" / "s-000000.tar")) as writer:
        writer.write(members)
    loaded = next(iter(build_shard_loader(str(tmp_path / "shards" / "s-000000.tar"),
                                          batch_size=1, shuffle_buffer=0)))
    decoded, _ = decode_sample(members)
    ours = collate([sample_tensors(decoded["clip.npy"], decoded["frame.jpg"],
                                   decoded["mel.npy"], decoded["txt"], key=meta.key,
                                   meta=decoded["json"])])
    assert ours.keys() == loaded.keys()
    for name, value in loaded.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(ours[name], value), name
        else:
            assert ours[name] == value, name
    assert ours["audio"].dtype == torch.float16 and torch.equal(ours["audio"][0],
                                                                torch.from_numpy(mel))
    torch.testing.assert_close(to_model_units("audio", ours["audio"])[0],
                               (torch.from_numpy(mel).float() - MEL_CENTER) / MEL_SCALE)


def test_a_video_window_reaches_the_model_as_the_loader_gives_its_mp4_clip(
        tmp_path: Path, video: Path) -> None:
    """`omni generate`'s video input goes the loader's way: the window's frames encoded as
    prepare stores them (an mp4 clip) and decoded to I420 planes, equal to the loader's batch
    of that sample, so `to_model_units` gives the model training's units."""
    config = PrepareConfig(clip_duration=1.0, fps=4, video_size=32, image_size=64, n_mels=16)
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (config.video_frames, 32, 32, 3), dtype=np.uint8)
    meta = SampleMeta.build(config, source="v.mp4", video_id="v_0123456789abcdef",
                            clip_index=0, start=0.0, end=1.0, rotation=0, has_audio=True,
                            transcript_source="srt", transcript_timed=True, clip_encoding="mp4")
    members = encode_sample(meta.key, meta, np.zeros((16, config.audio_frames), np.float16),
                            np.zeros((64, 64, 3), np.uint8), frames, "", config, "mp4")
    (tmp_path / "shards").mkdir()
    with wds.TarWriter(str(tmp_path / "shards" / "s-000000.tar")) as writer:
        writer.write(members)
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"schema_version": 1, "config": config.to_dict(), "shards": [
            {"path": "shards/s-000000.tar", "samples": 1,
             "bytes": (tmp_path / "shards" / "s-000000.tar").stat().st_size}]}))
    loaded = next(iter(build_shard_loader(tmp_path, batch_size=1, shuffle_buffer=0)))
    ours = sample_arrays_batch(SampleArrays("v.mp4", 0.0, frames, fps=config.fps))
    assert ours["video"].shape == loaded["video"].shape == (1, config.video_frames, 48, 32)
    assert torch.equal(ours["video"], loaded["video"])
    arrays = load_video_window(video, CONFIG)
    batch = sample_arrays_batch(arrays)
    wanted = i420_frames(encode_clip(arrays.frames, "mp4", CONFIG.fps))
    assert torch.equal(batch["video"][0], torch.from_numpy(wanted))
    assert to_model_units("video", batch["video"]).shape == (
        1, 3, CONFIG.video_frames, CONFIG.video_size, CONFIG.video_size)


def test_a_picture_makes_a_batch_of_only_an_image(media_dir: Path) -> None:
    path = write_image(media_dir / "only.png", waves_picture(0.0, 300, 200))
    batch = sample_arrays_batch(load_image_file(path, CONFIG))
    assert set(batch) == {"image", "__key__", "meta"}
    assert batch["image"].shape == (1, CONFIG.image_size, CONFIG.image_size, 3)
    assert batch["image"].dtype == torch.uint8  # model units on the device: to_model_units


def test_normalisations_invert() -> None:
    pixels = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(unit_to_pixels(pixels_to_unit(pixels)), pixels)
    assert unit_to_pixels(torch.tensor([-1.5, -1.0, 0.0, 0.999, 1.0, 2.0])).tolist() == [
        0, 0, 128, 255, 255, 255]
    log = torch.linspace(-13.8, 8.8, 50)
    torch.testing.assert_close(model_to_mel((log - MEL_CENTER) / MEL_SCALE), log)


# -- writers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp"])
def test_write_image_decodes_at_its_size(tmp_path: Path, suffix: str) -> None:
    image = waves_picture(0.0, 96, 64)
    path = write_image(tmp_path / f"out{suffix}", image)
    with Image.open(path) as written:
        assert written.size == (96, 64) and written.mode == "RGB"
        if suffix == ".png":
            np.testing.assert_array_equal(np.asarray(written), image)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left


def clip_frames(count: int, size: int = 32) -> np.ndarray:
    return np.stack([waves_picture(i / 4, size, size) for i in range(count)])  # (T, H, W, 3)


def test_write_video_mp4_keeps_every_frame_at_the_rate(tmp_path: Path) -> None:
    frames = clip_frames(13)
    path = write_video(tmp_path / "out.mp4", frames, fps=8)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        times = [float(frame.time) for frame in container.decode(stream)]
        assert stream.average_rate == 8 and stream.codec_context.name in ("h264", "mpeg4")
    assert len(times) == 13
    np.testing.assert_allclose(times, np.arange(13) / 8)


def test_write_video_gif_has_every_frame(tmp_path: Path) -> None:
    path = write_video(tmp_path / "out.gif", clip_frames(16), fps=8)
    with Image.open(path) as gif:
        assert gif.n_frames == 16
        durations = []
        for index in range(16):
            gif.seek(index)
            durations.append(gif.info["duration"])
    assert durations[:2] == [120, 130] and sum(durations) == 2000  # 16 frames at 8 fps


def test_writers_refuse_what_they_cannot_write(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match=r"\.png, \.jpg"):
        write_image(tmp_path / "out.bmp", waves_picture(0.0, 8, 8))
    with pytest.raises(MediaError, match="even frame size"):
        write_video(tmp_path / "odd.mp4", clip_frames(2, size=31), fps=8)
    with pytest.raises(MediaError, match="does not exist"):
        write_wav(tmp_path / "missing" / "out.wav", np.zeros(10, np.float32), 16000)


def test_write_wav_reads_back_at_16k(tmp_path: Path) -> None:
    samples = (0.5 * np.sin(np.arange(16000) / 5)).astype(np.float32)
    samples[:2] = (1.5, -1.5)  # clipped, not wrapped
    path = write_wav(tmp_path / "out.wav", samples, 16000)
    with wave.open(str(path)) as handle:
        assert (handle.getframerate(), handle.getnchannels(), handle.getsampwidth()) == (
            16000, 1, 2)
        assert handle.getnframes() == 16000
        pcm = np.frombuffer(handle.readframes(16000), dtype="<i2")
    assert pcm[:2].tolist() == [32767, -32767]
    np.testing.assert_allclose(pcm[2:] / 32767, samples[2:], atol=1 / 32767)


# -- Griffin-Lim -----------------------------------------------------------------------------


def test_griffin_lim_keeps_a_tones_frequency() -> None:
    t = np.arange(CONFIG.samples_per_clip) / CONFIG.sample_rate
    for hz in (440.0, 1000.0, 3150.0):
        tone = (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)
        audio = mel_to_waveform(log_mel(tone, CONFIG), CONFIG)
        assert audio.shape == (CONFIG.samples_per_clip,) and audio.dtype == np.float32
        spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
        peak = np.argmax(spectrum) * CONFIG.sample_rate / len(audio)
        # Within one STFT bin (40 Hz); measured 2.5, 0 and 13 Hz off. The mel keeps no finer
        # detail where its filters are wider than a bin (above ~1 kHz).
        assert abs(peak - hz) < CONFIG.sample_rate / CONFIG.n_fft, (hz, peak)


def test_griffin_lim_re_analyses_close_to_its_input() -> None:
    t = np.arange(CONFIG.samples_per_clip) / CONFIG.sample_rate
    chirp = 0.5 * np.sin(2 * np.pi * (100 * t + 975 * t**2))  # 100 Hz -> 4 kHz over 2 s
    noise = 0.1 * np.random.default_rng(0).standard_normal(len(t))
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    for signal, bound, loud_only in ((chirp, GL_CHIRP_BOUND, False),
                                     (noise, GL_NOISE_BOUND, False),
                                     (tone, GL_TONE_LOUD_BOUND, True)):
        mel = log_mel(signal.astype(np.float32), CONFIG).astype(np.float32)
        again = log_mel(mel_to_waveform(mel, CONFIG), CONFIG).astype(np.float32)
        error = np.abs(again - mel)
        if loud_only:
            error = error[mel > mel.max() - math.log(1e4)]  # within 40 dB of the peak
        assert error.mean() < bound


def test_griffin_lim_is_deterministic_and_checks_its_input() -> None:
    mel = log_mel(tone_signal(CONFIG.samples_per_clip, CONFIG.sample_rate, 440.0, 0.5), CONFIG)
    np.testing.assert_array_equal(mel_to_waveform(mel, CONFIG, 4), mel_to_waveform(mel, CONFIG, 4))
    with pytest.raises(ConfigError, match="n_mels=128"):
        mel_to_waveform(mel[:64], CONFIG)


# -- hostile inputs: non-regular files, sidecars through symlinks ---------------------------


def _load_in_thread(load) -> BaseException | None:
    """What `load()` raised, run in a thread that must not hang: a FIFO given to a reader that
    opens it blocks until a writer comes, so the test opens one itself if it does."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            load()
            outcome.append(None)
        except BaseException as err:  # handed to the test
            outcome.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=60)
    return outcome[0] if outcome else TimeoutError("the load hung")


@pytest.mark.parametrize("name", ["fifo.png", "fifo.wav", "fifo.mp4", "fifo.txt"])
def test_a_fifo_named_like_an_input_is_refused_not_opened(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    os.mkfifo(path)
    try:
        error = _load_in_thread(lambda: load_input(path, CONFIG))
    finally:  # releases a reader stuck in open(); harmless when none is
        with contextlib.suppress(OSError):
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    assert isinstance(error, MediaError), error
    assert "is a FIFO, not a regular file" in str(error)


def test_generate_reads_sidecars_by_prepares_symlink_rules(tmp_path: Path) -> None:
    """A sidecar symlink out of the video's folder is not read (a note says so) unless
    follow_symlinks, as `omni prepare` treats it; a link inside the folder is read."""
    inside, outside = tmp_path / "inside", tmp_path / "outside"
    inside.mkdir()
    outside.mkdir()
    video = make_video(inside / "v.mp4", duration=2.0, fps=8).path
    srt = "1\n00:00:00,000 --> 00:00:02,000\n{}\n"
    (outside / "secret.srt").write_text(srt.format("private words"), encoding="utf-8")
    (inside / "v.srt").symlink_to(outside / "secret.srt")
    config = dataclasses.replace(CONFIG, fps=8)
    refused = load_video_window(video, config)
    assert not refused.text
    assert any("leads out of the input folder" in note for note in refused.notes)
    assert load_video_window(video, config, follow_symlinks=True).text == "private words"
    (inside / "real.srt").write_text(srt.format("own words"), encoding="utf-8")
    (inside / "v.srt").unlink()
    (inside / "v.srt").symlink_to(inside / "real.srt")
    assert load_video_window(video, config).text == "own words"


# -- outputs: whole or not at all --------------------------------------------------------------


def test_racing_writers_each_rename_a_whole_file(tmp_path: Path, monkeypatch) -> None:
    """Two writers of one name, both done writing before either renames: each has a temporary
    name of its own, so both renames succeed (one shared name: the second found it gone)."""
    barrier = threading.Barrier(2, timeout=60)
    replace = os.replace

    def replace_together(source, target) -> None:
        if Path(target).parent == tmp_path:
            barrier.wait()
        replace(source, target)

    monkeypatch.setattr(os, "replace", replace_together)
    out = tmp_path / "race.png"
    pictures = [np.full((8, 8, 3), level, np.uint8) for level in (10, 200)]
    errors: list[BaseException] = []

    def write(picture: np.ndarray) -> None:
        try:
            write_image(out, picture)
        except BaseException as err:  # handed to the test
            errors.append(err)

    threads = [threading.Thread(target=write, args=(picture,)) for picture in pictures]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with Image.open(out) as image:
        assert int(np.asarray(image)[0, 0, 0]) in (10, 200)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["race.png"]  # no temporary left


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    out.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_output(out) as handle:
        handle.write(b"half a fil")
        raise RuntimeError("the writer failed")
    assert out.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["out.txt"]
    write_text(out, "new")
    assert out.read_text() == "new\n"
    with pytest.raises(MediaError, match="it is a folder"):
        write_text(tmp_path, "x")
