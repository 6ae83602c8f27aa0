"""The `omni` command: assembles one module per command; nothing else lives here.

`main` imports only the module of the command on its command line (every module, for
`omni --help` or an unknown name). No command module imports torch when it is imported (that
takes seconds); `omni train` imports it when it runs. `app`, the whole command with every
subcommand, is built on first access (PEP 562), for tests and for embedding."""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from collections.abc import Iterable

import typer

# Command name -> (module, function, in the order `omni --help` lists them); each module
# also defines EXAMPLES, the epilog of its help.
COMMANDS = {"prepare": ("cli.prepare", "prepare_command"),
            "inspect": ("cli.inspect", "inspect_command"), "train": ("cli.train", "train"),
            "eval": ("cli.evaluate", "eval_command"),
            "generate": ("cli.generate", "generate_command"),
            "demo-videos": ("cli.demo_videos", "demo_videos"),
            "demo": ("cli.demo", "demo_command")}


def root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.")) -> None:
    """OmniLatent command line."""
    if version:
        from cli.console import console
        from omnilatent import __version__

        console.print(f"omni {__version__}")
        raise typer.Exit()


def build_app(names: Iterable[str] = COMMANDS) -> typer.Typer:
    """The `omni` Typer app with the commands `names` (default: all of them)."""
    app = typer.Typer(name="omni", help="OmniLatent: prepare videos into shards, inspect them, "
                      "and train one model on every modality.", no_args_is_help=True,
                      add_completion=False, rich_markup_mode="rich",
                      pretty_exceptions_enable=False)
    app.callback(invoke_without_command=True)(root)
    for name in names:
        module_name, function = COMMANDS[name]
        module = importlib.import_module(module_name)
        command = getattr(module, function)
        help_text = reflowed(command.__doc__ or "")
        app.command(name, epilog=module.EXAMPLES, help=help_text,
                    short_help=first_sentence(help_text))(command)
    return app


def reflowed(doc: str) -> str:
    """A docstring as help that reflows: Typer's rich mode keeps a docstring's line breaks,
    which then fall mid-sentence at any other width ("Stop with Ctrl-C or⏎SIGTERM"), so each
    paragraph becomes one line for rich to wrap at the terminal's width."""
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join(" ".join(paragraph.split()) for paragraph in paragraphs)


def first_sentence(help_text: str) -> str:
    """The line `omni --help` lists a command with: its help's first sentence."""
    first = help_text.split("\n\n")[0]
    end = re.search(r"\.\s+(?=[A-Z])", first)  # not in "e.g. \"the red circle…\""
    return first if end is None else first[:end.start() + 1]


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
        from pipeline.prepare.worker import start_forkserver

        start_forkserver()
    build_app([command] if command in COMMANDS else COMMANDS)()


if __name__ == "__main__":  # `python -m cli.app`, e.g. under torchrun -m cli.app
    main()
