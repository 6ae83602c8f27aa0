"""`omni demo-videos`: write a sample world of short videos to try the pipeline and training.

The videos come from `pipeline.demo_media`: eight classes whose shape, sound and sentence go
together, with random variation per video, so a model trained on them has something to
learn and a set made with another seed tests it on unseen videos."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import TextColumn

from cli.console import console, human_bytes, live_bar, plain, table
from cli.errors import run_command
from pipeline.demo_media import DEMO_CLASSES, DemoVideo, make_demo_videos

EXAMPLES = """
[bold]Examples[/]

  16 videos of 4 s (two of each class), then prepare them:
    [cyan]omni demo-videos demo/videos[/]
    [cyan]omni prepare demo/videos demo/shards[/]

  A training set, and an unseen evaluation set of the same classes (another seed):
    [cyan]omni demo-videos world/train --count 96 --seed 0[/]
    [cyan]omni demo-videos world/eval --count 32 --seed 1 --duration 2[/]

  A world with the gaps of real video (no transcript, speech gaps, no sound, varied
  lengths and frame rates):
    [cyan]omni demo-videos world/real --count 40 --realistic[/]
"""


def _summary(videos: list[DemoVideo], out_dir: Path) -> None:
    per_class = Counter(video.class_name for video in videos)
    listing = table(f"{len(videos)} demo videos", "class", "videos", "transcript",
                    right=("videos",), show_edge=False)
    for demo_class in DEMO_CLASSES:
        if per_class[demo_class.name]:
            listing.add_row(demo_class.name, str(per_class[demo_class.name]), demo_class.sentence)
    console.print(listing)
    size = sum(video.path.stat().st_size for video in videos)
    kinds = Counter(video.kind for video in videos)
    if set(kinds) == {"complete"}:
        console.print(f"{human_bytes(size)} in {plain(out_dir)} ({videos[0].duration:g} s "
                      "each, .srt and .vtt transcripts)", soft_wrap=True)
    else:
        lengths = [video.duration for video in videos]
        rates = sorted({video.fps for video in videos})
        console.print(f"{human_bytes(size)} in {plain(out_dir)} ({min(lengths):g}-"
                      f"{max(lengths):g} s, {'/'.join(map(str, rates))} fps; "
                      + ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items())) + ")",
                      soft_wrap=True)
    console.print(f"next: [cyan]omni prepare {plain(out_dir)} SHARD_DIR[/]", soft_wrap=True)


def demo_videos(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the videos into (created "
                                            "if missing).", show_default=False)],
    count: Annotated[int, typer.Option("--count", min=1, help="How many videos; the classes "
                                       "take turns, so multiples of 8 are balanced.")] = 16,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of the class order and "
                                      "of every video's variation; another seed gives "
                                      "unseen videos.")] = 0,
    duration: Annotated[float, typer.Option("--duration", min=1.0,
                                            help="Seconds per video.")] = 4.0,
    realistic: Annotated[bool, typer.Option(
        "--realistic", help="Give the world the gaps of real video, in turn by index: no "
        "transcript, speech covering only part of a video, no audio stream; lengths of "
        "0.75-1.5x --duration (at least 2 s) and frame rates of 12-30 fps vary.")] = False,
) -> None:
    """Write sample videos (H.264 + AAC, 160x120) of eight classes, e.g. "the red circle
    hums": a shape moving over grey noise, its sound and its sentence as a transcript (.srt
    or .vtt). File names carry the class and seed, e.g. red-circle_s0_007.mp4."""

    def body() -> None:
        progress = live_bar("demo-videos",
                            TextColumn("{task.completed:.0f}/{task.total:.0f} videos"),
                            TextColumn("{task.fields[rate]} videos/s"))
        with progress:
            task = progress.add_task("demo-videos", total=count, rate="-")

            def advance(_video: DemoVideo) -> None:
                progress.advance(task)
                done = progress.tasks[task]
                if done.elapsed:
                    progress.update(task, rate=f"{done.completed / done.elapsed:.1f}")

            videos = make_demo_videos(out_dir, count=count, seed=seed, duration=duration,
                                      on_video=advance, realistic=realistic)
        _summary(videos, out_dir)

    run_command(body)
