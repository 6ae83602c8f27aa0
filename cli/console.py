"""The one rich Console every command renders through, and `plain` for what it must not read
as markup."""

from rich.console import Console
from rich.markup import escape

console = Console(highlight=False)


def plain(value: object) -> str:
    """``str(value)`` escaped for rich markup, so that it prints exactly as it is.

    Every text the CLI did not write itself (a path, a file name, text read from a file or a
    manifest, an exception's message) goes through this before it is put into a markup string,
    a table cell or a progress field: a file named ``shards/[/x].tar`` would otherwise stop
    the command with a MarkupError, ``broken [i].mp4`` would print as ``broken .mp4``, and a
    ``[link=…]`` tag would plant a terminal hyperlink that hides the real path.
    Backslashes at the end are doubled and closed by an empty span, so that they print as they
    are whether a tag follows or not (rich's own `escape` gets one of the two wrong).
    """
    text = str(value)
    body = text.rstrip("\\")
    trailing = len(text) - len(body)
    return escape(body) + ("\\" * (2 * trailing) + "[dim][/dim]" if trailing else "")


def human_bytes(count: float) -> str:
    """1234567 -> '1.2 MB' (decimal units, as disk tools print them)."""
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"
