"""Work units: the grain of resume and of scale-out.

A unit is a run of consecutive videos in discovery order (sorted relative paths), at most
`PrepareConfig.videos_per_unit` of them. Its shards and its stats file are named by its index
(`shards/unit-000012-000000.tar`, `stats/unit-000012.json`), so every machine that lists the
same input folder derives the same units, and a unit is done or not as a whole.

`--part I/N` selects every N-th unit starting with unit I-1 (I is 1-based): units I-1, I-1+N,
I-1+2N, ... Interleaving rather than contiguous blocks spreads the long and short videos of a
folder (often grouped by sub-folder) over all parts, so parts of a job array finish at about the
same time. Parts are disjoint and together cover every unit exactly once."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import ConfigError
from pipeline.media.discover import VideoSource
from pipeline.shards.files import unit_name


@dataclass(frozen=True)
class Part:
    """Part `index` (1-based) of `count`: which share of the units one invocation processes."""

    index: int = 1
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ConfigError(f"part count must be >= 1, got {self.count} (use --part I/N)")
        if not 1 <= self.index <= self.count:
            raise ConfigError(f"part index must lie in 1..{self.count}, got {self.index} "
                              f"(--part I/N is 1-based)")

    @classmethod
    def parse(cls, text: str) -> Part:
        """Read "I/N" (e.g. "2/8"); raises ConfigError with the expected form otherwise."""
        pieces = text.strip().split("/")
        if len(pieces) != 2 or not all(p.strip().isdigit() for p in pieces):
            raise ConfigError(f"--part must look like I/N with whole numbers, e.g. 1/4; "
                              f"got {text!r}")
        return cls(int(pieces[0]), int(pieces[1]))

    def owns(self, unit: int) -> bool:
        """Whether unit number `unit` (0-based) belongs to this part."""
        return unit % self.count == self.index - 1

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass(frozen=True)
class WorkUnit:
    """Unit `index` (0-based) and its videos, in discovery order."""

    index: int
    sources: tuple[VideoSource, ...]

    @property
    def name(self) -> str:
        """`unit-000012`: the stem of its stats file and the prefix of its shards."""
        return unit_name(self.index)

    @property
    def rel_paths(self) -> list[str]:
        return [source.rel_path for source in self.sources]


def plan_units(sources: list[VideoSource], videos_per_unit: int) -> list[WorkUnit]:
    """Cut the discovered videos (already sorted) into consecutive units of `videos_per_unit`.

    The last unit may be shorter. No videos gives no units."""
    if videos_per_unit < 1:
        raise ConfigError(f"videos_per_unit must be >= 1, got {videos_per_unit}")
    return [WorkUnit(i // videos_per_unit, tuple(sources[i : i + videos_per_unit]))
            for i in range(0, len(sources), videos_per_unit)]


def select_part(units: list[WorkUnit], part: Part) -> list[WorkUnit]:
    """The units that `part` processes, in unit order."""
    return [unit for unit in units if part.owns(unit.index)]
