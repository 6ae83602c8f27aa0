"""A phased curriculum over training tasks, learned from video.

The default schedule (`DEFAULT_SHARES`, `DEFAULT_WEIGHTS`: each phase adds tasks to the one
before) and why its shares and weights differ from the seed's (measured: bench/learning.py) are
in README.md, "Curriculum training".

Within a phase, tasks follow a smooth weighted round-robin (deterministic, exact proportions,
state a few floats): weighted random draws would make short windows of the loss swing with the
mix of tasks they held. A batch without transcript text passes over the text tasks (counted);
a corpus without any text drops them from every phase at the start."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omnilatent.checkpoint.json_values import is_count, is_number
from omnilatent.config import OmniLatentConfig
from omnilatent.errors import CheckpointError, ConfigError
from omnilatent.model import OmniLatentModel
from omnilatent.tasks import PAIR_TASKS, TASK_NAMES, Task, TaskSampler, build_task
from omnilatent.training.config import TrainConfig, as_train_config
from omnilatent.training.trainer import Trainer

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, published as a package
    import tomli as tomllib


@dataclass(frozen=True)
class Phase:
    """A named stretch of training: a share of the steps (or a fixed step count) and weighted
    tasks."""

    name: str
    tasks: dict[str, float]
    share: float | None = None
    steps: int | None = None

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ConfigError("every phase needs a non-empty name")
        if (self.share is None) == (self.steps is None):
            raise ConfigError(f"phase {self.name!r}: give exactly one of 'share' or 'steps'")
        if self.share is not None and not (0 <= self.share <= 1):
            raise ConfigError(f"phase {self.name!r}: share must lie in [0, 1], got {self.share}")
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 0):
            raise ConfigError(f"phase {self.name!r}: steps must be an integer >= 0, "
                              f"got {self.steps!r}")
        if not self.tasks:
            raise ConfigError(f"phase {self.name!r} has no tasks")
        for task, weight in self.tasks.items():
            if task not in TASK_NAMES:
                raise ConfigError(f"phase {self.name!r}: unknown task {task!r}; known tasks: "
                                  f"{', '.join(TASK_NAMES)}")
            if not (isinstance(weight, (int, float)) and weight > 0 and math.isfinite(weight)):
                raise ConfigError(f"phase {self.name!r}: task {task!r} needs a weight > 0, "
                                  f"got {weight!r}")


@dataclass(frozen=True)
class PhaseSpan:
    phase: Phase
    start: int  # first step index (0-based) of the phase
    end: int  # one past the last


@dataclass(frozen=True)
class Schedule:
    """Phases in order. Fixed-step phases take their steps; shares split the rest and must
    sum to 1 (when any phase uses a share)."""

    phases: tuple[Phase, ...]

    def __post_init__(self) -> None:
        if not self.phases:
            raise ConfigError("a schedule needs at least one phase")
        names = [p.name for p in self.phases]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"phase names must be unique; repeated: {', '.join(dupes)}")
        shares = [p.share for p in self.phases if p.share is not None]
        if shares and not math.isclose(sum(shares), 1.0, abs_tol=1e-6):
            detail = ", ".join(f"{p.name}={p.share:g}" for p in self.phases if p.share is not None)
            raise ConfigError(f"phase shares must sum to 1, got {sum(shares):.6g} ({detail})")

    def spans(self, total_steps: int) -> list[PhaseSpan]:
        """Step ranges per phase; share boundaries are cumulative shares rounded half up, so
        the spans tile [0, total_steps) exactly."""
        fixed = sum(p.steps for p in self.phases if p.steps is not None)
        if fixed > total_steps:
            raise ConfigError(f"phases with fixed steps need {fixed} steps but the run has "
                              f"only {total_steps}")
        if fixed < total_steps and all(p.steps is not None for p in self.phases):
            raise ConfigError(f"phase steps sum to {fixed} but the run has {total_steps} "
                              "steps; give the steps to match or use shares")
        flexible = total_steps - fixed
        spans, start, cumulative = [], 0, 0.0
        for phase in self.phases:
            if phase.steps is not None:
                length = phase.steps
            else:
                cumulative += phase.share or 0.0
                # rounded to 1e-9 first: 0.05 + 0.2 + 0.1 + 0.3 sums to 0.6499999999999999,
                # which must still round half up (x 10 steps: 7, not 6)
                length = math.floor(round(flexible * cumulative, 9) + 0.5) - sum(
                    s.end - s.start for s in spans if s.phase.share is not None)
            spans.append(PhaseSpan(phase, start, start + length))
            start += length
        return spans

    def without_text_tasks(self) -> tuple[Schedule, list[str]]:
        """The same schedule minus text tasks; a phase left empty takes every non-text task
        of the schedule. Returns the notes to show the user."""
        def is_text(name: str) -> bool:
            return name in PAIR_TASKS and "text" in PAIR_TASKS[name]

        fallback: dict[str, float] = {}
        for phase in self.phases:
            for name, weight in phase.tasks.items():
                if not is_text(name):
                    fallback.setdefault(name, weight)
        if not fallback:
            raise ConfigError("the corpus has no transcripts and every task of the schedule "
                              "needs text; add non-text tasks")
        phases, notes = [], []
        for phase in self.phases:
            kept = {k: v for k, v in phase.tasks.items() if not is_text(k)}
            dropped = sorted(set(phase.tasks) - set(kept))
            if dropped:
                kept = kept or dict(fallback)
                notes.append(f"phase {phase.name!r} trains {', '.join(sorted(kept))} instead "
                             f"of {', '.join(dropped)}")
            phases.append(Phase(phase.name, kept, phase.share, phase.steps))
        return Schedule(tuple(phases)), notes


def _cumulative(*groups: list[str]) -> list[dict[str, float]]:
    out, acc = [], []
    for group in groups:
        acc = acc + group
        out.append({name: DEFAULT_WEIGHTS[name] for name in acc})
    return out


# Weights of the default phases' tasks: what carries across modalities counts most.
DEFAULT_WEIGHTS = {
    "video_recon": 0.5, "audio_recon": 0.5, "temporal": 0.5,
    "video_to_audio": 2.0, "audio_to_video": 2.0, "video_to_text": 2.0, "audio_to_text": 2.0,
    "image_to_text": 1.0, "text_to_image": 1.0, "image_to_audio": 1.0, "audio_to_image": 1.0}
_DEFAULT_TASKS = _cumulative(["video_recon", "audio_recon"],
                             ["video_to_audio", "audio_to_video"], ["temporal"],
                             ["video_to_text", "audio_to_text"],
                             ["image_to_text", "text_to_image", "image_to_audio", "audio_to_image"])
DEFAULT_SHARES = {"warmup": 0.05, "crossmodal": 0.20, "temporal": 0.10, "grounding": 0.30,
                  "joint": 0.35}
DEFAULT_SCHEDULE = Schedule(tuple(
    Phase(name, tasks, share=share)
    for (name, share), tasks in zip(DEFAULT_SHARES.items(), _DEFAULT_TASKS, strict=True)))


def default_schedule(shares: dict[str, float] | None = None) -> Schedule:
    """The default phases with some shares replaced; unnamed phases keep their default share,
    except ``joint``, which takes whatever is left when it is not given."""
    shares = dict(shares or {})
    unknown = sorted(set(shares) - set(DEFAULT_SHARES))
    if unknown:
        raise ConfigError(f"unknown phase(s) {', '.join(unknown)}; the default phases are "
                          f"{', '.join(DEFAULT_SHARES)} (define new phases in a TOML/JSON file)")
    merged = {**DEFAULT_SHARES, **shares}
    if "joint" not in shares:
        merged["joint"] = round(1.0 - sum(v for k, v in merged.items() if k != "joint"), 12)
        if merged["joint"] < 0:
            raise ConfigError(f"phase shares add up to more than 1 before joint "
                              f"({1 - merged['joint']:.6g})")
    return Schedule(tuple(Phase(p.name, p.tasks, share=merged[p.name])
                          for p in DEFAULT_SCHEDULE.phases))


def _parse_inline(spec: str) -> Schedule:
    shares: dict[str, float] = {}
    for item in spec.split(","):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"bad schedule item {item!r}: expected name=share, e.g. "
                              "warmup=0.1,crossmodal=0.25,temporal=0.25,grounding=0.15,joint=0.25")
        try:
            shares[name.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"bad share {value!r} for phase {name.strip()!r}") from None
    return default_schedule({**{k: 0.0 for k in DEFAULT_SHARES}, **shares})


def _phase_from_dict(data: Any, where: str) -> Phase:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: each phase must be a table/object")
    unknown = sorted(set(data) - {"name", "share", "steps", "tasks"})
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} "
                          "(allowed: name, share, steps, tasks)")
    tasks = data.get("tasks")
    if isinstance(tasks, list):
        tasks = {t: 1.0 for t in tasks}
    if not isinstance(tasks, dict):
        raise ConfigError(f"{where}: 'tasks' must be a list of names or a name -> weight table")
    return Phase(name=data.get("name", ""), tasks=tasks, share=data.get("share"),
                 steps=data.get("steps"))


def load_schedule_file(path: Path) -> Schedule:
    """TOML (``[[phases]]`` tables) or JSON (``{"phases": [...]}``) with name, share or steps,
    and tasks (a list, or a table of weights)."""
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read schedule file {path}: {exc}") from exc
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"schedule file {path} is not valid "
                          f"{'TOML' if path.suffix.lower() == '.toml' else 'JSON'}: {exc}") from exc
    phases = data.get("phases") if isinstance(data, dict) else None
    if not isinstance(phases, list):
        raise ConfigError(f"schedule file {path} needs a 'phases' list")
    return Schedule(tuple(_phase_from_dict(p, f"{path} phase {i + 1}")
                          for i, p in enumerate(phases)))


def parse_schedule(spec: str) -> Schedule:
    """``default``, an inline ``name=share,…`` spec over the default phases, or a file path."""
    spec = spec.strip()
    if spec == "default":
        return DEFAULT_SCHEDULE
    path = Path(spec)
    if path.suffix.lower() in (".toml", ".json"):
        if not path.is_file():
            raise ConfigError(f"schedule file {path} does not exist")
        return load_schedule_file(path)
    if "=" in spec:
        return _parse_inline(spec)
    raise ConfigError(f"--phase-schedule {spec!r}: expected 'default', an inline spec like "
                      "'warmup=0.1,crossmodal=0.25,temporal=0.25,grounding=0.15,joint=0.25', "
                      "or a .toml/.json file")


@dataclass
class _RoundRobin:
    """Smooth weighted round-robin: each pick adds every eligible weight to its counter and
    takes the largest, which then pays back the eligible total. Ties go to the task listed
    last, so a phase opens with the tasks it adds (in a short run, grounding must not spend
    its few steps on the reconstruction tasks listed first)."""

    current: dict[str, float] = field(default_factory=dict)

    def pick(self, weights: dict[str, float]) -> str:
        total = sum(weights.values())
        for name, weight in weights.items():
            self.current[name] = self.current.get(name, 0.0) + weight
        order = list(weights)
        best = max(weights, key=lambda n: (self.current[n], order.index(n)))
        self.current[best] -= total
        return best


class CurriculumSampler(TaskSampler):
    """The phased schedule as a `TaskSampler`: the phase of each step, its tasks in smooth
    weighted round-robin, and the text tasks passed over (``text_skipped``).

    ``corpus_has_text`` False (known from the manifest) drops text tasks up front; None means
    unknown: batches without text pass over text tasks. Clips of ``config`` (the model's) too
    short for future frames are refused here, not after the earlier phases ran."""

    def __init__(self, schedule: Schedule | str, total_steps: int, config: OmniLatentConfig,
                 corpus_has_text: bool | None = None) -> None:
        if isinstance(schedule, str):
            schedule = parse_schedule(schedule)
        self._notes: list[str] = []
        if corpus_has_text is False:
            schedule, self._notes = schedule.without_text_tasks()
            self._notes.insert(0, "the corpus has no transcripts: text tasks are skipped")
        self.schedule = schedule
        self.spans = schedule.spans(total_steps)
        self.tasks = {name: build_task(name, config.tubelet_size) for name in TASK_NAMES}
        self._rr = _RoundRobin()
        self._phase_name: str | None = None
        self.text_skipped = 0
        frames, tubelet = config.video_frames, config.tubelet_size
        for span in self.spans:  # future frames: a clip is cut in two at a whole tubelet
            if frames < 2 * tubelet and "temporal" in span.phase.tasks and span.end > span.start:
                raise ConfigError(
                    f"phase {span.phase.name!r} trains 'temporal' (future frames from past "
                    f"ones), which needs clips of at least {2 * tubelet} frames (two tubelets "
                    f"of {tubelet}), but the clips have {frames}; prepare longer clips "
                    "(--clip-duration, --fps) or use a schedule without 'temporal'")

    def notes(self) -> list[str]:
        return list(self._notes)

    def span_at(self, step: int) -> PhaseSpan:
        """The phase that step index ``step`` (0-based) belongs to."""
        for span in self.spans:
            if span.start <= step < span.end:
                return span
        return self.spans[-1]

    def select(self, step: int, present: set[tuple[str, str]],
               notify: Callable[[str], None]) -> Task | None:
        span = self.span_at(step)
        if span.phase.name != self._phase_name:
            self._rr = _RoundRobin()
            self._phase_name = span.phase.name
            notify(f"phase {span.phase.name!r} (steps {span.start + 1}-{span.end}): "
                   f"{', '.join(span.phase.tasks)}")
        eligible = {name: w for name, w in span.phase.tasks.items()
                    if (self.tasks[name].source, self.tasks[name].target) in present}
        if len(eligible) < len(span.phase.tasks) and ("text", "text") not in present:
            self.text_skipped += 1
        if not eligible:
            return None
        return self.tasks[self._rr.pick(eligible)]

    def log_fields(self, step: int) -> dict[str, Any]:
        span = self.span_at(max(step - 1, 0))
        return {"phase": span.phase.name, "phase_step": step - span.start,
                "text_skipped": self.text_skipped}

    def state_dict(self) -> dict[str, Any]:
        return {"phase": self._phase_name, "round_robin": dict(self._rr.current),
                "text_skipped": self.text_skipped}

    def mismatch(self, state: Any) -> str | None:
        if isinstance(state, dict) and "round_robin" not in state and "turn" in state:
            return ("holds no curriculum state: it was written by a run without a phase "
                    "schedule; resume it that way, or start a new run in another save dir")
        return None

    def check_state_dict(self, state: Any) -> None:
        if self.mismatch(state):
            return
        robin = state.get("round_robin") if isinstance(state, dict) else None
        if not (isinstance(robin, dict) and isinstance(state.get("phase"), (str, type(None)))
                and all(name in TASK_NAMES and is_number(value, -math.inf)
                        for name, value in robin.items())
                and is_count(state.get("text_skipped"))):
            raise CheckpointError("'sampler' (the curriculum state) must be {phase: a name or "
                                  "null, round_robin: task -> number, text_skipped: an integer "
                                  ">= 0}")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._phase_name = state["phase"]
        self._rr = _RoundRobin(dict(state["round_robin"]))
        self.text_skipped = state["text_skipped"]


def CurriculumTrainer(  # noqa: N802 - the seed's class name, kept for its scripts
    model: OmniLatentModel,
    config: TrainConfig | OmniLatentConfig,
    dataloader: Any,
    total_steps: int | None = None,
    save_dir: Path | str | None = None,
    schedule: Schedule | str = DEFAULT_SCHEDULE,
    corpus_has_text: bool | None = None,
    **trainer_options: Any,
) -> Trainer:
    """The seed's curriculum trainer: a `Trainer` with a `CurriculumSampler`. ``total_steps``
    and ``save_dir`` override those of ``config`` in a validated copy; ``trainer_options`` go
    to `Trainer` (callbacks, card, ...)."""
    overrides = {"steps": total_steps, "save_dir": None if save_dir is None else Path(save_dir)}
    train_config = dataclasses.replace(as_train_config(config), **{
        key: value for key, value in overrides.items() if value is not None})
    sampler = CurriculumSampler(schedule, train_config.steps, model.config, corpus_has_text)
    return Trainer(model, train_config, dataloader, sampler=sampler, **trainer_options)
