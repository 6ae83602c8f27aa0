"""Checks of the trainer's own keys in a checkpoint's state.json, run before a resume
restores anything (and by `--resume auto` to skip what cannot be restored).

`omnilatent.training.checkpoint.verify_checkpoint` checks the generic keys (format, step, files,
hash); a state.json whose hash matches can still be unusable (written by a buggy or foreign
tool, or hashed again after an edit), and a resume that fails half-way would leave the model
half-restored.
"""

from __future__ import annotations

import math
from typing import Any

from omnilatent.config import MODALITIES, OmniLatentConfig
from omnilatent.errors import CheckpointError, OmniLatentError
from omnilatent.training.json_values import is_count, is_number
from omnilatent.training.rng import check_rng_state
from omnilatent.training.run_log import DATA_COUNTERS

PAIRS = len(MODALITIES) ** 2
STATE_KEYS = ("model_config", "train_config", "hooks", "rng", "pair_sampler", "data", "extra",
              "card")


def _check_log_window(window: Any) -> None:
    if not (isinstance(window, dict)
            and {"recent", "samples", "tokens", "skipped", "seconds"} <= set(window)
            and isinstance(window["recent"], list)
            and all(isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
                    and is_number(item[1], -math.inf) for item in window["recent"])
            and all(is_count(window[k]) for k in ("samples", "tokens", "skipped"))
            and is_number(window["seconds"])):
        raise CheckpointError("'log_window' must be {recent: [[task, loss], ...], samples, "
                              "tokens, skipped (integers >= 0), seconds (>= 0)}")


def _check_data(data: Any) -> None:
    if not (isinstance(data, dict) and is_count(data.get("batches_seen"))
            and "loader" in data and (data["loader"] is None or isinstance(data["loader"], dict))
            and (data.get("source") is None or isinstance(data["source"], str))):
        raise CheckpointError("'data' must be {batches_seen: an integer >= 0, loader: the "
                              "loader's position or null, source: the data source's name}")
    counters = data.get("counters")
    if counters is not None and not (isinstance(counters, dict)
                                     and set(counters) == set(DATA_COUNTERS)
                                     and all(is_count(v) for v in counters.values())):
        raise CheckpointError(f"'data.counters' must hold {', '.join(DATA_COUNTERS)} "
                              "(integers >= 0)")


def check_trainer_state(state: dict[str, Any]) -> None:
    """Raise CheckpointError saying which of the trainer's own state.json keys is unusable.

    The generic keys (format, step, files, hash) are checked by `verify_checkpoint`; these are
    the ones `Trainer.resume` reads, checked for everything it relies on, so a resume never
    fails half-way through restoring them. Keys added after format 2 (``log_window``,
    ``data.source``, ``data.counters``) may be missing.
    """
    missing = [key for key in STATE_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"has no {', '.join(map(repr, missing))} (edited, or not "
                              "written by a training run)")
    if not isinstance(state["model_config"], dict):
        raise CheckpointError("'model_config' must be an object")
    try:
        OmniLatentConfig.from_dict(state["model_config"])
    except (OmniLatentError, TypeError, ValueError) as exc:
        raise CheckpointError(f"'model_config' is not a valid model configuration ({exc})") \
            from None
    if not isinstance(state["train_config"], dict):
        raise CheckpointError("'train_config' must be an object")
    hooks = state["hooks"]
    if not (isinstance(hooks, list)
            and all(isinstance(h, dict) and isinstance(h.get("name"), str) for h in hooks)):
        raise CheckpointError("'hooks' must be a list of hook settings (objects with a name)")
    check_rng_state(state["rng"])
    _check_data(state["data"])
    sampler = state["pair_sampler"]
    most = PAIRS * state["data"]["batches_seen"]  # a turn per batch drawn, at most 16 passed over
    if not (isinstance(sampler, dict) and is_count(sampler.get("turn"))
            and sampler["turn"] <= most):
        raise CheckpointError(f"'pair_sampler' must be {{turn: an integer from 0 to {most}}} "
                              "(16 pairs for each of 'data.batches_seen')")
    if "log_window" in state:
        _check_log_window(state["log_window"])
    if not isinstance(state["extra"], dict):
        raise CheckpointError("'extra' must be an object")
