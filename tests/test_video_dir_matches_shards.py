"""`--video-dir` training sees the samples `omni prepare` writes (issue 9, item 10).

Both paths must place an untimed transcript the same way: over the picture, not over the
container's duration (which here covers audio running 4 s past the picture).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
from media import make_audio_only, make_video, read_samples

from omnilatent.training.video_dataset import VideoWatchingDataset
from pipeline.config import PrepareConfig
from pipeline.media.ffmpeg_bin import ffmpeg_binary
from pipeline.prepare.run import RunOptions, prepare
from pipeline.shards.decode import decode_sample
from pipeline.shards.schema import MEMBER_JSON, MEMBER_MEL, MEMBER_TEXT, clip_member

WORDS = "one two three four five six seven eight"
CONFIG = PrepareConfig(clip_duration=2.0, clip_stride=1.0, fps=4, video_size=32,
                       image_size=32, n_mels=16, eval_fraction=0.0)


def _shard_samples(out: Path) -> dict[str, dict]:
    return {key: decode_sample({"__key__": key, **members})[0]
            for key, members in read_samples(out).items()}


def test_video_dir_samples_equal_the_prepared_shards(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    picture = make_video(tmp_path / "picture.mkv", duration=4.0, size=(64, 48), audio=None)
    sound = make_audio_only(tmp_path / "sound.m4a", duration=8.0)
    subprocess.run([ffmpeg_binary(), "-nostdin", "-v", "error", "-i", str(picture.path),
                    "-i", str(sound.path), "-map", "0:v", "-map", "1:a", "-c", "copy",
                    str(videos / "longaudio.mkv")], check=True)
    (videos / "longaudio.txt").write_text(WORDS, encoding="utf-8")
    make_video(videos / "timed.mp4", duration=3.0, size=(64, 48))
    (videos / "timed.srt").write_text("1\n00:00:00,500 --> 00:00:02,500\nhello there\n",
                                      encoding="utf-8")
    prepare(videos, tmp_path / "out", CONFIG, RunOptions(workers=1, clip_encoding="npy"))
    shards = _shard_samples(tmp_path / "out")

    dataset = VideoWatchingDataset.from_prepare_config(videos, CONFIG)
    live = {sample["__key__"]: sample
            for source in dataset.videos for sample in dataset.video_samples(source)}

    assert sorted(live) == sorted(shards) and len(live) == 3 + 2
    clip = clip_member("npy")
    for key, sample in live.items():
        stored = shards[key]
        assert sample[MEMBER_TEXT] == stored[MEMBER_TEXT], key
        np.testing.assert_array_equal(sample[MEMBER_MEL], stored[MEMBER_MEL])
        np.testing.assert_array_equal(sample[clip], stored[clip])
        assert sample[MEMBER_JSON] == stored[MEMBER_JSON], key
    # The words go over the 4 s picture (three windows: 0-2, 1-3, 2-4 s), not the 8 s audio.
    texts = sorted((s[MEMBER_JSON]["start"], s[MEMBER_TEXT]) for s in live.values()
                   if s[MEMBER_JSON]["source"] == "longaudio.mkv")
    assert texts[0][1].startswith("one") and texts[-1][1].endswith("eight")
