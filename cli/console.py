"""The one rich Console every command renders through, `plain` for what it must not read as
markup, and the small formatting helpers the commands share."""

from collections.abc import Collection, Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

console = Console(highlight=False)


def plain(value: object) -> str:
    """``str(value)`` escaped for rich markup, so that it prints exactly as it is.

    Every text the CLI did not write itself (a path, a file name, text read from a file or a
    manifest, an exception's message) goes through this before it is put into a markup string,
    a table cell or a progress field: a file named ``shards/[/x].tar`` would otherwise stop
    the command with a MarkupError, ``broken [i].mp4`` would print as ``broken .mp4``, and a
    ``[link=…]`` tag would plant a terminal hyperlink that hides the real path.
    Backslashes at the end are doubled and closed by an empty span, so that they print as they
    are whether a tag follows or not (rich's own `escape` gets one of the two wrong)."""
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


def count(number: int, noun: str) -> str:
    """3, "shard" -> "3 shards"; 1, "shard" -> "1 shard"."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def table(title: str, *columns: str, right: Collection[str] = (), fold: Collection[str] = (),
          **options: Any) -> Table:
    """A Table with these columns, those named in `right` right-justified and those in `fold`
    folded (paths and reasons are never cut short)."""
    made = Table(title=title, **options)
    for column in columns:
        made.add_column(column, justify="right" if column in right else "left",
                        overflow="fold" if column in fold else "ellipsis")
    return made


def live_bar(label: str, *columns: ProgressColumn, remaining: bool = True,
             **options: Any) -> Progress:
    """The progress layout every command shares: `label` in bold, the bar, `columns`, time
    elapsed and (with `remaining`) left; transient, so the summary replaces it."""
    return Progress(TextColumn(f"[bold]{label}"), BarColumn(), *columns, TimeElapsedColumn(),
                    *([TimeRemainingColumn()] if remaining else []), console=console,
                    transient=True, **options)


def print_not_prepared(title: str, videos: Sequence[tuple[str, str, str]],
                       warnings: Sequence[tuple[str, str]], warnings_heading: str,
                       limit: int) -> None:
    """The (source, status, reason) of videos not prepared, then the (source, text) warnings
    on videos prepared anyway: the first `limit` of each, then how many more --json lists."""
    if videos:
        listing = table(title, "video", "status", "reason", fold=("video", "reason"))
        for source, status, reason in videos[:limit]:
            colour = "red" if status == "failed" else "yellow"
            listing.add_row(plain(source), f"[{colour}]{plain(status)}[/]", plain(reason))
        console.print(listing)
        if len(videos) > limit:
            console.print(f"... and {len(videos) - limit} more (see --json)")
    if warnings:
        console.print(f"[yellow]{warnings_heading}[/] (videos prepared anyway):")
        for source, text in warnings[:limit]:
            console.print(f"  {plain(source)}: {plain(text)}", soft_wrap=True)
