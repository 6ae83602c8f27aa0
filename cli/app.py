"""The `omni` command: assembles one module per command; nothing else lives here.

`main` imports only the module of the command on its command line (every module, for
`omni --help` or an unknown name). No command module imports torch when it is imported (that
takes seconds); `omni train` imports it when it runs. `app`, the whole command with every
subcommand, is built on first access (PEP 562), for tests and for embedding.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable

import typer

# Command name -> (module, function, in the order `omni --help` lists them); each module
# also defines EXAMPLES, the epilog of its help.
COMMANDS = {
    "prepare": ("cli.prepare", "prepare_command"),
    "inspect": ("cli.inspect", "inspect_command"),
    "train": ("cli.train", "train"),
    "eval": ("cli.evaluate", "eval_command"),
    "generate": ("cli.generate", "generate_command"),
    "demo-videos": ("cli.demo_videos", "demo_videos"),
    "demo": ("cli.demo", "demo_command"),
}


def root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
) -> None:
    """OmniLatent command line."""
    if version:
        from cli.console import console
        from omnilatent import __version__

        console.print(f"omni {__version__}")
        raise typer.Exit()


def build_app(names: Iterable[str] = COMMANDS) -> typer.Typer:
    """The `omni` Typer app with the commands `names` (default: all of them)."""
    app = typer.Typer(
        name="omni",
        help="OmniLatent: prepare videos into shards, inspect them, and train one model on "
        "every modality.",
        no_args_is_help=True,
        add_completion=False,
        rich_markup_mode="rich",
        pretty_exceptions_enable=False,
    )
    app.callback(invoke_without_command=True)(root)
    for name in names:
        module_name, function = COMMANDS[name]
        module = importlib.import_module(module_name)
        app.command(name, epilog=module.EXAMPLES)(getattr(module, function))
    return app


def __getattr__(name: str) -> typer.Typer:
    if name == "app":
        app = build_app()
        globals()["app"] = app
        return app
    raise AttributeError(f"module 'cli.app' has no attribute {name!r}")


def main() -> None:
    # The root takes no option with a value, so the first bare word names the command.
    command = next((arg for arg in sys.argv[1:] if not arg.startswith("-")), None)
    if command == "prepare":
        # The workers' forkserver imports numpy, PyAV and PIL (~0.5 s): started first, it does
        # so while this process imports the CLI, parses and plans, not after.
        from pipeline.worker import start_forkserver

        start_forkserver()
    build_app([command] if command in COMMANDS else COMMANDS)()


if __name__ == "__main__":  # `python -m cli.app`, e.g. under torchrun -m cli.app
    main()
