"""`omni demo-videos`: write short sample videos to try the pipeline without footage."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.console import console
from cli.errors import run_command
from pipeline.demo_media import make_demo_videos

EXAMPLES = """
[bold]Examples[/]

  Four 6-second videos with sound and .srt/.vtt/.txt transcripts, then prepare them:
    [cyan]omni demo-videos demo/videos[/]
    [cyan]omni prepare demo/videos demo/shards[/]
"""


def demo_videos(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the videos into.")],
    count: Annotated[int, typer.Option("--count", min=1, help="How many videos.")] = 4,
    scenes: Annotated[int, typer.Option("--scenes", min=1,
                                        help="1.5-second scenes per video.")] = 4,
    seed: Annotated[int, typer.Option("--seed", help="Seed for the scene order.")] = 0,
) -> None:
    """Write sample videos (H.264 + AAC) whose picture, tone and transcript change together
    scene by scene; the i-th video gets a .srt, .vtt, .txt or no transcript, in turn."""

    def body() -> None:
        videos = make_demo_videos(out_dir, count=count, scenes_per_video=scenes, seed=seed)
        for video in videos:
            transcript = video.transcript.name if video.transcript else "no transcript"
            console.print(f"{video.path}  ({video.duration:g} s, {transcript})", soft_wrap=True)

    run_command(body)
