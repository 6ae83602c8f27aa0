"""What each metrics record is computed from, kept so that a resumed run logs the records an
uninterrupted one logs: the sliding loss window, the counts since the last record, and the
loader's cumulative counters of what it delivered and dropped."""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from omnilatent.checkpoint.json_values import is_count, is_number
from omnilatent.errors import CheckpointError
from omnilatent.tasks import canonical_task_name

# Record fields measured with the wall clock: the only ones a resumed run may log differently.
WALL_CLOCK_FIELDS = ("tokens_per_s", "samples_per_s")
# The loader's counters in each record's "data" (when the loader keeps `stats`, as the shard
# loader does); "dropped" are samples it could not use (corrupt, incomplete, inconsistent).
DATA_COUNTERS = ("samples", "dropped", "unsafe_members", "corrupt_shards", "surplus_shards")
DROPPED_WARNING = 0.01  # warn once the loader has dropped more than this share of samples


def dropped_share(counters: dict[str, int]) -> float:
    """Share of the samples the loader read that it dropped (0 before any)."""
    read = counters["samples"] + counters["dropped"]
    return counters["dropped"] / read if read else 0.0


def loader_counters(loader: Any) -> dict[str, int] | None:
    """The loader's `stats` (a `pipeline.loader` `LoaderStats`) as DATA_COUNTERS, or None for a
    loader that keeps none."""
    stats = getattr(loader, "stats", None)
    return None if stats is None else {name: int(getattr(stats, name)) for name in DATA_COUNTERS}


@dataclass
class LogWindow:
    """What the next metrics record is computed from: the losses of the last ``log_interval``
    steps (a sliding window) and the samples, tokens, skipped batches and wall-clock seconds
    since the previous record. Checkpointed, so a resumed run logs the same records."""

    recent: deque[tuple[str, float]]
    samples: int = 0
    tokens: int = 0
    skipped: int = 0
    seconds: float = 0.0  # before `started`
    started: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return self.seconds + time.perf_counter() - self.started

    def restart(self) -> None:
        """Start the next record's counts (the loss window slides on)."""
        self.samples = self.tokens = self.skipped = 0
        self.seconds, self.started = 0.0, time.perf_counter()

    def state_dict(self) -> dict[str, Any]:
        return {"recent": [[name, loss] for name, loss in self.recent], "samples": self.samples,
                "tokens": self.tokens, "skipped": self.skipped, "seconds": self.elapsed()}

    @staticmethod
    def check_state_dict(window: Any) -> None:
        if not (isinstance(window, dict)
                and {"recent", "samples", "tokens", "skipped", "seconds"} <= set(window)
                and isinstance(window["recent"], list)
                and all(isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
                        and is_number(item[1], -math.inf) for item in window["recent"])
                and all(is_count(window[k]) for k in ("samples", "tokens", "skipped"))
                and is_number(window["seconds"])):
            raise CheckpointError("'log_window' must be {recent: [[task, loss], ...], samples, "
                                  "tokens, skipped (integers >= 0), seconds (>= 0)}")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.recent.clear()
        self.recent.extend((canonical_task_name(name), float(loss))
                           for name, loss in state["recent"])
        self.samples, self.tokens = state["samples"], state["tokens"]
        self.skipped, self.seconds = state["skipped"], float(state["seconds"])
        self.started = time.perf_counter()
