"""The one rich Console every command renders through."""

from rich.console import Console

console = Console(highlight=False)
