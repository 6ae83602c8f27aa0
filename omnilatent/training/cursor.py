"""The trainer's position in its data (batches drawn, the loader's own position, its counters
over the whole run): a stateful part of every checkpoint, one per process."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import torch

from omnilatent.checkpoint.json_values import is_count
from omnilatent.errors import CheckpointError, OmniLatentError
from omnilatent.training.distributed import DistributedContext, all_reduce
from omnilatent.training.run_log import DATA_COUNTERS, loader_counters
from pipeline.errors import PipelineError


class DataCursor:
    """Draws batches from ``loader`` and keeps count. A loader with ``state_dict`` /
    ``load_state_dict`` resumes at its next batch; one without (a plain DataLoader) draws and
    drops the batches already consumed, the same samples only if its order is fixed."""

    def __init__(self, loader: Any, dist: DistributedContext) -> None:
        self.loader = loader
        self.dist = dist
        self.batches_seen = 0
        self._skip = 0
        self._iterator: Iterator | None = None
        # counters of earlier runs (from the checkpoint), and the loader's when it resumed
        self._before = dict.fromkeys(DATA_COUNTERS, 0)
        self._mark = dict.fromkeys(DATA_COUNTERS, 0)

    def next_batch(self) -> dict:
        for _attempt in range(2):
            if self._iterator is None:
                self._iterator = iter(self.loader)
            try:
                batch = next(self._iterator)
            except StopIteration:
                self._iterator = None
                continue
            self.batches_seen += 1
            return batch
        raise OmniLatentError("the data loader yielded no batches; check the data source")

    def fast_forward(self) -> None:
        while self._skip > 0:
            self.next_batch()
            self._skip -= 1

    def local_counters(self) -> dict[str, int] | None:
        """This rank's loader counters over the whole run (None: the loader keeps none)."""
        now = loader_counters(self.loader)
        if now is None:
            return None
        return {k: self._before[k] + now[k] - self._mark[k] for k in DATA_COUNTERS}

    def counters(self) -> dict[str, int] | None:
        """The loader's counters over the whole run and every rank (a collective)."""
        mine = self.local_counters()
        if mine is None or not self.dist.enabled:
            return mine
        totals = all_reduce([mine[k] for k in DATA_COUNTERS], torch.distributed.ReduceOp.SUM,
                            self.dist)
        return {k: int(v) for k, v in zip(DATA_COUNTERS, totals, strict=True)}

    def state_dict(self) -> dict[str, Any]:
        return {"batches_seen": self.batches_seen,
                "loader": self.loader.state_dict() if hasattr(self.loader, "state_dict") else None,
                "counters": self.local_counters()}

    @staticmethod
    def check_state_dict(state: Any, key: str = "'data'") -> None:
        """CheckpointError naming ``key`` (its place in state.json) if unrestorable."""
        if not (isinstance(state, dict) and is_count(state.get("batches_seen"))
                and (state.get("loader") is None or isinstance(state["loader"], dict))):
            raise CheckpointError(f"{key} must be {{batches_seen: an integer >= 0, "
                                  "loader: the loader's position or null, counters}}")
        counters = state.get("counters")
        if counters is not None and not (isinstance(counters, dict)
                                         and set(counters) == set(DATA_COUNTERS)
                                         and all(is_count(v) for v in counters.values())):
            raise CheckpointError(f"{key} counters must hold {', '.join(DATA_COUNTERS)} "
                                  "(integers >= 0)")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take the position ``state`` (checked by ``check_state_dict``); the loader checks its
        own part first, so a refused position is a CheckpointError that changes nothing."""
        if state["loader"] is not None and hasattr(self.loader, "load_state_dict"):
            try:
                self.loader.load_state_dict(state["loader"])
            except (OmniLatentError, PipelineError, KeyError, TypeError, ValueError) as exc:
                raise CheckpointError(f"the data loader cannot continue from the saved "
                                      f"position ({exc})") from exc
            self.batches_seen = state["batches_seen"]
        else:
            self.batches_seen, self._skip = 0, state["batches_seen"]
            if self._skip and not hasattr(self.loader, "state_dict"):
                warnings.warn(
                    f"the data loader ({type(self.loader).__name__}) keeps no position "
                    f"(no state_dict): resuming draws and drops the {self._skip} batches "
                    "already consumed, which are the same samples only if its order is fixed "
                    "(no shuffle); for an exact resume use "
                    "omnilatent.training.build_dataloader", stacklevel=4)
        if state.get("counters") is not None:
            self._before = dict(state["counters"])
            self._mark = loader_counters(self.loader) or self._mark
