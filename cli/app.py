"""The `omni` command: assembles one module per command; nothing else lives here."""

from __future__ import annotations

import typer

from cli import demo_videos as demo_videos_cmd
from cli import inspect as inspect_cmd
from cli import prepare as prepare_cmd
from cli import train as train_cmd

app = typer.Typer(
    name="omni",
    help="OmniLatent: prepare videos into shards, inspect them, and train one model on every "
    "modality.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
) -> None:
    """OmniLatent command line."""
    if version:
        from cli.console import console
        from omnilatent import __version__

        console.print(f"omni {__version__}")
        raise typer.Exit()


app.command("prepare", epilog=prepare_cmd.EXAMPLES)(prepare_cmd.prepare_command)
app.command("inspect", epilog=inspect_cmd.EXAMPLES)(inspect_cmd.inspect_command)
app.command("train", epilog=train_cmd.EXAMPLES)(train_cmd.train)
app.command("demo-videos", epilog=demo_videos_cmd.EXAMPLES)(demo_videos_cmd.demo_videos)


def main() -> None:
    app()
