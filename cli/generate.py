"""`omni generate`: one input file (or text) through a trained checkpoint into one output file.

The work happens in `omnilatent.inference.generate`; this module parses the options, says what
it made, and prints generated text."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.console import console, plain
from cli.errors import EXIT_USAGE, CLIError, run_command
from cli.options import Device, Hooks, Threads
from omnilatent.checkpoint.card import MAX_TEXT_LEN

EXAMPLES = """
[bold]Examples[/]

  The transcript of the window starting 1 s into a video:
    [cyan]omni generate runs/tiny --from clip.mp4 --start 1 --to text --out caption.txt[/]

  The sound of a picture, the picture of a sound, a clip from a sentence:
    [cyan]omni generate runs/tiny --from photo.jpg --to audio --out photo.wav[/]
    [cyan]omni generate runs/tiny --from hum.wav --to image --out hum.png[/]
    [cyan]omni generate runs/tiny --text "the red circle hums" --to video --out red.gif[/]

  Use a video's soundtrack (not its picture) as the input:
    [cyan]omni generate runs/tiny --from clip.mp4 --from-modality audio --to video \\
      --out clip-from-sound.mp4[/]
"""

TARGETS = ("text", "image", "audio", "video")


def generate_command(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint folder (SAVE_DIR/step-N) or "
                                               "a save dir (its newest complete checkpoint).")],
    to: Annotated[str, typer.Option("--to", help="Output modality: text, image, audio or "
                                    "video.")],
    out: Annotated[Path, typer.Option("--out", help="Output file: .txt (text), .png/.jpg/.webp "
                                      "(image), .wav (audio), .mp4/.gif (video).")],
    source: Annotated[Path | None, typer.Option(
        "--from", help="Input file: a video (any container omni prepare reads), audio "
        "(.wav .flac .mp3 .ogg .m4a .opus .aac), a picture (.png .jpg .webp) or a .txt.")]
    = None,
    text: Annotated[str | None, typer.Option("--text", help="Input text (instead of --from).")]
    = None,
    from_modality: Annotated[str | None, typer.Option(
        "--from-modality", help="Read the input as this modality instead of guessing from the "
        "extension; for a video file: video (default), image, audio or text (its "
        "transcript).")] = None,
    start: Annotated[float, typer.Option(
        "--start", min=0.0, help="Seconds into a video or audio file where the window "
        "starts.")] = 0.0,
    max_tokens: Annotated[int | None, typer.Option(
        "--max-tokens", min=1, max=MAX_TEXT_LEN, help="Longest text to generate (default: "
        f"the training length; at most {MAX_TEXT_LEN}).")] = None,
    follow_symlinks: Annotated[bool, typer.Option(
        "--follow-symlinks",
        help="Read a video's sidecar transcript where a symlink leads it out of the video's "
             "folder; without it, it is ignored with a note, as omni prepare does.")] = False,
    hooks: Hooks = None,
    device: Device = "auto",
    threads: Threads = None) -> None:
    """Generate one output from one input with a trained checkpoint. The input goes through
    the same decode, geometry and mel code as `omni prepare`, so the model sees what it saw
    in training; audio outputs are inverted from log-mel with Griffin-Lim."""

    def body() -> None:
        from omnilatent.inference.generate import check_output_path, generate, read_input
        from omnilatent.inference.trained import load_trained
        from omnilatent.threads import configure_threads
        from omnilatent.training.trainer import resolve_device

        if to not in TARGETS:
            raise CLIError(f"--to must be one of {', '.join(TARGETS)}, got {to!r}",
                           exit_code=EXIT_USAGE)
        if (source is None) == (text is None):
            raise CLIError("give exactly one input: --from FILE or --text TEXT",
                           exit_code=EXIT_USAGE)
        check_output_path(to, out)
        configure_threads(threads)
        trained = load_trained(checkpoint, resolve_device(device), hooks or [])
        modality, arrays = read_input(trained, source, text, from_modality, start,
                                      follow_symlinks=follow_symlinks)
        made = generate(trained, modality, arrays, to, out, max_tokens)
        for note in made.notes:
            console.print(f"[yellow]note:[/] {plain(note)}", soft_wrap=True)
        if made.text is not None:
            console.print(made.text, soft_wrap=True, markup=False, highlight=False)
        console.print(f"[green]wrote[/] {plain(made.path)} ({made.source} -> {made.target}, "
                      f"checkpoint step {trained.step})", soft_wrap=True)

    run_command(body)
