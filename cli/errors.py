"""One CLI error type and the single place where any error becomes a message and exit code.

Library code raises its own exceptions (all OmniLatentError); commands may raise
CLIError for bad arguments. ``run_command`` renders all of them the same way, with the
traceback only when OMNI_DEBUG=1. A plain ValueError is rendered too: it is what third-party
code raises for a value a user passed on (braceexpand for an unbalanced `--shards` pattern,
torch for a state that does not fit), so it is a message to act on, not a crash to report."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

import typer

from cli.console import console, plain
from omnilatent.errors import OmniLatentError

T = TypeVar("T")

EXIT_ERROR = 1
EXIT_USAGE = 2


class CLIError(Exception):
    """A user-facing error with an exit code and an optional hint."""

    def __init__(self, message: str, hint: str | None = None, exit_code: int = EXIT_ERROR):
        super().__init__(message)
        self.hint = hint
        self.exit_code = exit_code


def run_command(fn: Callable[[], T], usage: tuple[type[Exception], ...] = ()) -> T:
    """Call ``fn`` and turn known errors into a one-line message and a non-zero exit. The
    library errors in ``usage`` (e.g. UsageError: options that contradict each other or the
    save dir) are the options' fault: they exit with the usage code, as a bad option does."""
    try:
        return fn()
    except (CLIError, OmniLatentError, ValueError) as exc:
        exit_code = EXIT_USAGE if isinstance(exc, usage) else getattr(exc, "exit_code", EXIT_ERROR)
        if os.environ.get("OMNI_DEBUG") == "1":
            console.print_exception()
        console.print(f"[bold red]Error:[/] {plain(exc)}")
        hint = getattr(exc, "hint", None)
        if hint:
            console.print(f"[dim]Hint:[/] {plain(hint)}")
        elif exit_code != EXIT_USAGE and os.environ.get("OMNI_DEBUG") != "1":
            # a usage error is the options' fault, not a failure with a traceback to read
            console.print("[dim]Set OMNI_DEBUG=1 for the full traceback.[/]")
        raise typer.Exit(exit_code) from None
