"""Checkpoint folders (issue 9): pruning never loses the last good checkpoint, and a malformed
or edited state.json is a CheckpointError with a reason, never a crash, so a search skips it."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from omnilatent.checkpoint.files import (
    STATE_FILE,
    checkpoint_dir,
    find_latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
    verify_checkpoint,
)
from omnilatent.errors import CheckpointError

TRAINING_STATE = {"optimizer": {"lr": 0.1, "steps": [1, 2]}}


def _save(save_dir: Path, step: int, state: dict[str, Any] | None = None) -> Path:
    return save_checkpoint(save_dir, step, {"w": torch.zeros(2)}, TRAINING_STATE,
                           {"note": "tiny", "rng": [1, 2, 3]} if state is None else state)


def _state(folder: Path) -> dict[str, Any]:
    return json.loads((folder / STATE_FILE).read_text())


def _digest(state: dict[str, Any]) -> str:
    """The documented state hash: SHA-256 of the canonical JSON without the hash itself."""
    body = {k: v for k, v in state.items() if k != "state_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _write(folder: Path, state: dict[str, Any], *, rehash: bool) -> None:
    if rehash:  # a consistent hash, so the schema check itself must catch the problem
        state["state_sha256"] = _digest(state)
    (folder / STATE_FILE).write_text(json.dumps(state))


def _edit(change: Callable[[dict[str, Any]], object], *, rehash: bool = True
          ) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        state = _state(folder)
        change(state)
        _write(folder, state, rehash=rehash)
    return damage


def _raw(text: str) -> Callable[[Path], None]:
    return lambda folder: (folder / STATE_FILE).write_text(text)


def _directory(folder: Path) -> None:
    (folder / STATE_FILE).unlink()
    (folder / STATE_FILE).mkdir()


def _entry(name: str, **meta: object) -> Callable[[dict[str, Any]], object]:
    return lambda state: state["files"][name].update(meta)


MALFORMED: dict[str, tuple[Callable[[Path], None], str]] = {
    "a list": (_raw("[1, 2]"), "must hold a JSON object, not [1, 2]"),
    "a directory": (_directory, "state.json is a directory"),
    "absurd nesting": (_raw("[" * 100_000 + "]" * 100_000), "not valid JSON"),
    "a 5000-digit number": (_raw('{"step": ' + "9" * 5000 + "}"), "not valid JSON"),
    "no format": (_edit(lambda s: s.pop("format")), "has no 'format'"),
    "no step": (_edit(lambda s: s.pop("step")), "has no 'step'"),
    "no files": (_edit(lambda s: s.pop("files")), "has no 'files'"),
    "format as text": (_edit(lambda s: s.update(format="3")), 'format "3" is not supported'),
    "format as float": (_edit(lambda s: s.update(format=2.0)), "format 2.0 is not supported"),
    "step as text": (_edit(lambda s: s.update(step="10")), 'integer from 0 to 99999999, not "10"'),
    "step as bool": (_edit(lambda s: s.update(step=True)), "integer from 0 to 99999999, not true"),
    "step as float": (_edit(lambda s: s.update(step=10.0)), "integer from 0 to 99999999, not 10.0"),
    "step 10**30": (_edit(lambda s: s.update(step=10**30)), "integer from 0 to 99999999, not 1000"),
    "step -50": (_edit(lambda s: s.update(step=-50)), "integer from 0 to 99999999, not -50"),
    "step 3 in a step-10 folder": (_edit(lambda s: s.update(step=3)),
                                   "says step 3 but the folder is step-00000010"),
    "files as a list": (_edit(lambda s: s.update(files=[])), "'files' must be an object"),
    "a path outside": (_edit(lambda s: s["files"].update({"../x": s["files"]["training.pt"]})),
                       "must list"),
    "entry not an object": (_edit(lambda s: s["files"].update({"training.pt": 5})),
                            "entry of training.pt must be"),
    "size missing": (_edit(lambda s: s["files"]["training.pt"].pop("bytes")),
                     "entry of training.pt must be"),
    "size negative": (_edit(_entry("training.pt", bytes=-1)), "entry of training.pt must be"),
    "size as text": (_edit(_entry("training.pt", bytes="9")), "entry of training.pt must be"),
    "hash uppercase": (_edit(lambda s: s["files"]["model.safetensors"].update(
        sha256=s["files"]["model.safetensors"]["sha256"].upper())),
        "entry of model.safetensors must be"),
    "hash as number": (_edit(_entry("model.safetensors", sha256=7)),
                       "entry of model.safetensors must be"),
    "no state hash": (_edit(lambda s: s.pop("state_sha256"), rehash=False),
                      "state.json was edited or corrupted"),
    "state hash as number": (_edit(lambda s: s.update(state_sha256=0), rehash=False),
                             "state.json was edited or corrupted"),
    "an edited value": (_edit(lambda s: s.update(note="edited"), rehash=False),
                        "state.json was edited or corrupted"),
    "an edited value, NaN": (_edit(lambda s: s.update(note=float("nan")), rehash=False),
                             "state.json was edited or corrupted"),
    "format 2 carrying a hash": (_edit(lambda s: s.update(format=2), rehash=False),
                                 "state.json was edited or corrupted"),
}


@pytest.mark.parametrize(("damage", "reason"), MALFORMED.values(), ids=list(MALFORMED))
def test_a_malformed_state_json_is_refused_with_its_reason_and_skipped(
        tmp_path: Path, damage: Callable[[Path], None], reason: str) -> None:
    good = _save(tmp_path, 5)
    bad = _save(tmp_path, 10)
    damage(bad)
    with pytest.raises(CheckpointError, match=re.escape(reason)):
        verify_checkpoint(bad)
    with pytest.raises(CheckpointError, match=re.escape(reason)):
        load_checkpoint(bad)
    search = find_latest_checkpoint(tmp_path)
    assert search.latest == good
    assert [path for path, _ in search.skipped] == [bad]
    assert reason in search.skipped[0][1]


def test_every_flipped_bit_or_cut_of_state_json_is_refused(tmp_path: Path) -> None:
    """The state hash catches what the schema cannot: any changed value."""
    path = _save(tmp_path, 10)
    original = (path / STATE_FILE).read_bytes()
    damaged = [original[:cut] for cut in range(len(original))]
    damaged += [original[:i] + bytes([original[i] ^ 1]) + original[i + 1:]
                for i in range(len(original))]
    for data in damaged:
        (path / STATE_FILE).write_bytes(data)
        with pytest.raises(CheckpointError):
            verify_checkpoint(path)


@pytest.mark.parametrize("step", [-50, 100_000_000, True])
def test_save_refuses_a_step_the_folder_name_cannot_hold(tmp_path: Path, step: int) -> None:
    with pytest.raises(CheckpointError, match="integer from 0 to 99999999"):
        _save(tmp_path / "run", step)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("state", "reason"), [
    ({"step": 3}, "must not set step"),
    ({"loss": float("nan")}, "not plain JSON"),
    ({"path": Path("x")}, "not plain JSON"),
])
def test_save_refuses_a_state_it_could_not_verify_later(tmp_path: Path, state: dict[str, Any],
                                                       reason: str) -> None:
    with pytest.raises(CheckpointError, match=reason):
        _save(tmp_path / "run", 10, state)
    assert not (tmp_path / "run").exists()


def test_a_state_reads_back_as_it_verifies(tmp_path: Path) -> None:
    """Integer keys and tuples are hashed as JSON stores them (keys "10" < "9"), so the
    recorded hash matches what a reader recomputes."""
    path = _save(tmp_path, 10, {"by_step": {10: "a", 9: "b"}, "pair": (1, 2)})
    state = verify_checkpoint(path)
    assert state["by_step"] == {"10": "a", "9": "b"} and state["pair"] == [1, 2]
    assert state["state_sha256"] == _digest(state)


def test_new_checkpoints_are_format_4_and_format_2_ones_still_load(tmp_path: Path) -> None:
    path = _save(tmp_path, 10)
    state = verify_checkpoint(path)
    assert state["format"] == 4 and state["state_sha256"] == _digest(state)
    written_before = {k: v for k, v in state.items() if k != "state_sha256"} | {"format": 2}
    _write(path, dict(written_before), rehash=False)
    assert verify_checkpoint(path)["format"] == 2
    loaded = load_checkpoint(path)
    assert torch.equal(loaded.model_state["w"], torch.zeros(2))
    assert loaded.training_state == TRAINING_STATE
    _write(path, written_before | {"format": 1}, rehash=False)
    with pytest.raises(CheckpointError, match="format 1 is not supported"):
        verify_checkpoint(path)


def test_checkpoint_dir_accepts_the_folder_or_a_file_in_it(tmp_path: Path) -> None:
    path = _save(tmp_path / "run", 10)
    for given in (path, path / "training.pt", path / "model.safetensors", path / STATE_FILE):
        assert checkpoint_dir(given) == path
    partial = tmp_path / "run" / "step-00000020"  # its name says so; verify says what is wrong
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")
    assert checkpoint_dir(partial / "model.safetensors") == partial
    copied = tmp_path / "kept"  # another name, but it holds a state.json
    shutil.copytree(path, copied)
    assert checkpoint_dir(copied / "training.pt") == copied


@pytest.mark.parametrize(("given", "why"), [
    ("run", "is named like step-00000100"),
    ("run/notes.txt", "is named like step-00000100"),
    ("run/step-00000010/training.pt/x", "does not exist"),
    ("elsewhere/training.pt", "does not exist"),
])
def test_checkpoint_dir_refuses_anything_else(tmp_path: Path, given: str, why: str) -> None:
    _save(tmp_path / "run", 10)
    (tmp_path / "run" / "notes.txt").write_text("x")
    message = f"neither a checkpoint folder nor a file in one.*{why}"
    with pytest.raises(CheckpointError, match=message):
        checkpoint_dir(tmp_path / given)


def _refuse_step(refused: int) -> Callable[[Path, dict[str, Any]], None]:
    def check(path: Path, state: dict[str, Any]) -> None:
        if state["step"] == refused:
            raise CheckpointError(f"{path}: the trainer cannot use it")
    return check


def test_find_latest_skips_what_the_check_refuses(tmp_path: Path) -> None:
    for step in (3, 4, 5):
        _save(tmp_path, step)
    search = find_latest_checkpoint(tmp_path, check=_refuse_step(5))
    assert search.latest == tmp_path / "step-00000004"
    assert search.skipped == [(tmp_path / "step-00000005",
                               f"{tmp_path / 'step-00000005'}: the trainer cannot use it")]


def test_pruning_keeps_the_last_good_checkpoint_when_a_newer_one_is_partial(
        tmp_path: Path) -> None:
    """The issue's case: with keep_last 1 and a partial step-00000010/, a run that then wrote
    steps 2 and 4 pruned both and the good step 5, leaving only the partial folder."""
    good = _save(tmp_path, 5)
    partial = tmp_path / "step-00000010"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")
    two = _save(tmp_path, 2)
    assert prune_checkpoints(tmp_path, 1, keep=two) == []  # the one just written stays
    four = _save(tmp_path, 4)
    assert prune_checkpoints(tmp_path, 1, keep=four) == [two]
    assert sorted(p.name for p in tmp_path.iterdir()) == [four.name, good.name, partial.name]
    assert find_latest_checkpoint(tmp_path).latest == good
    assert prune_checkpoints(tmp_path, 1) == [four]  # older than the newest verified one
    assert partial.is_dir() and verify_checkpoint(good)["step"] == 5


def test_pruning_counts_and_deletes_only_usable_checkpoints(tmp_path: Path) -> None:
    for step in range(1, 7):
        _save(tmp_path, step)
    weights = tmp_path / "step-00000006" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:10])
    training = tmp_path / "step-00000002" / "training.pt"
    training.write_bytes(training.read_bytes()[::-1])  # same size, other content
    assert prune_checkpoints(tmp_path, 0, check=_refuse_step(4)) == []
    removed = prune_checkpoints(tmp_path, 2, check=_refuse_step(4))
    assert removed == [tmp_path / "step-00000001"]  # 6 corrupt, 5 kept, 4 refused, 3 kept,
    assert sorted(p.name for p in tmp_path.glob("step-*")) == [  # 2 corrupt: never deleted
        f"step-{s:08d}" for s in (2, 3, 4, 5, 6)]
