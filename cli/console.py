"""The one rich Console every command renders through."""

from rich.console import Console

console = Console(highlight=False)


def human_bytes(count: float) -> str:
    """1234567 -> '1.2 MB' (decimal units, as disk tools print them)."""
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"
