"""Issue 17 §2, §3: checkpoint and hook files are data. A weights file that is not safetensors,
and sizes in state.json, hook.json or a flag that no model could have, are one error naming
the file and what is wrong, decided before anything the file declares is allocated."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from omnilatent import OmniLatentConfig, OmniLatentModel
from omnilatent.checkpoint.card import CheckpointCard
from omnilatent.errors import CheckpointError, ConfigError, HookError, UsageError
from omnilatent.inference.generate import generate
from omnilatent.inference.trained import load_trained
from omnilatent.model.hooks import LatentNeuralHook
from omnilatent.training import TrainConfig, Trainer
from omnilatent.training.hook_training import parse_hook_spec
from tests.conftest import TINY

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny untrained checkpoint with a card and a hook."""
    torch.manual_seed(0)
    model = OmniLatentModel(OmniLatentConfig(**TINY))
    model.register_hook(LatentNeuralHook("style", 2, TINY["hidden_dim"], [0, 1]))
    save_dir = tmp_path_factory.mktemp("ckpt")
    trainer = Trainer(model, TrainConfig(steps=1, save_dir=save_dir), [],
                      card=CheckpointCard(max_text_len=16))
    return trainer.save()


@pytest.fixture(scope="module")
def hook_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return LatentNeuralHook("style", 2, TINY["hidden_dim"], [0, 1]).save(
        tmp_path_factory.mktemp("hook") / "style")


def _tampered(checkpoint: Path, tmp_path: Path, edit_state: Callable[[dict], None] = lambda s: None,
              weights: bytes | None = None) -> Path:
    """A copy of ``checkpoint`` changed by ``edit_state`` and ``weights``, with every size and
    hash in state.json recomputed: what a tool (or an attacker) that knows the format writes."""
    folder = tmp_path / checkpoint.name
    shutil.copytree(checkpoint, folder)
    if weights is not None:
        (folder / "model.safetensors").write_bytes(weights)
    state = json.loads((folder / "state.json").read_text())
    edit_state(state)
    for name, meta in state["files"].items():
        data = (folder / name).read_bytes()
        meta.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    body = {k: v for k, v in state.items() if k != "state_sha256"}
    state["state_sha256"] = hashlib.sha256(json.dumps(
        body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    (folder / "state.json").write_text(json.dumps(state))
    return folder


def _bad_weights(real: bytes) -> dict[str, bytes]:
    return {"header bomb": (1 << 60).to_bytes(8, "little") + b"{}" * 8,
            "garbage": bytes(range(256)) * 4,
            "truncated": real[: len(real) // 2],
            "pickle": pickle.dumps({"tokens": torch.zeros(2, 2)}),
            "too short": b"\x05\x00"}


@pytest.mark.parametrize("kind", list(_bad_weights(b"")))
def test_a_weights_file_that_is_not_safetensors_is_one_checkpoint_error(checkpoint, tmp_path,
                                                                         kind) -> None:
    weights = _bad_weights((checkpoint / "model.safetensors").read_bytes())[kind]
    folder = _tampered(checkpoint, tmp_path, weights=weights)
    with pytest.raises(CheckpointError, match="model.safetensors") as error:
        load_trained(folder)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("kind", list(_bad_weights(b"")))
def test_a_hook_weights_file_that_is_not_safetensors_is_one_hook_error(hook_dir, tmp_path,
                                                                        kind) -> None:
    folder = tmp_path / "style"
    shutil.copytree(hook_dir, folder)
    weights = folder / "hook.safetensors"
    weights.write_bytes(_bad_weights(weights.read_bytes())[kind])
    with pytest.raises(HookError, match="hook.safetensors") as error:
        LatentNeuralHook.load(folder)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(("settings", "reason"), [
    ({"num_tokens": 10**12}, "num_tokens must be an integer from 1 to"),
    ({"num_tokens": "8"}, "num_tokens"),
    ({"target_layers": list(range(5_000_000))}, "target_layers"),
    ({"target_layers": [0, 10**9]}, "target_layers"),
    ({"gate_bias_init": None}, "gate_bias_init"),
    ({"num_tokens": 3}, r"tokens has shape \(2, 32\), expected \(3, 32\)"),
])
def test_hook_settings_are_checked_against_caps_and_the_weights(hook_dir, tmp_path, settings,
                                                                 reason) -> None:
    folder = tmp_path / "style"
    shutil.copytree(hook_dir, folder)
    stored = json.loads((folder / "hook.json").read_text())
    (folder / "hook.json").write_text(json.dumps({**stored, **settings}))
    with pytest.raises(HookError, match=reason):
        LatentNeuralHook.load(folder)


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, "[1, 2]", "{"])
def test_hook_json_that_is_no_settings_object_is_a_hook_error(hook_dir, tmp_path, text) -> None:
    folder = tmp_path / "style"
    shutil.copytree(hook_dir, folder)
    (folder / "hook.json").write_text(text)
    with pytest.raises(HookError, match="hook.json is not valid hook settings"):
        LatentNeuralHook.load(folder)


def _set(path: str, value) -> Callable[[dict], None]:
    def edit(state: dict) -> None:
        *parents, last = path.split(".")
        target = state
        for key in parents:
            target = target[key] if not isinstance(target, list) else target[int(key)]
        target[last] = value
    return edit


@pytest.mark.parametrize(("edit", "reason"), [
    (_set("card.data_config", [1, 2]), "data_config is not the settings of omni prepare"),
    (_set("card.data_config", {"fps": "eight"}), "data_config is not the settings"),
    (_set("card.max_text_len", 10**9), "max_text_len must be an integer from 1 to 4096"),
    (_set("model_config.num_layers", 10**6), "num_layers must be at most 512"),
    (_set("model_config.image_size", 8192), "image_size must be at most 4096"),
    (_set("model_config.image_size", 2048), "one image input would be 16384 tokens"),
    (_set("hooks.0.num_tokens", 50_000_000), "num_tokens must be an integer from 1 to"),
    (_set("hooks.0.target_layers", [0, 10**9]), "target_layers"),
])
def test_sizes_in_state_json_are_capped(checkpoint, tmp_path, edit, reason) -> None:
    with pytest.raises(CheckpointError, match=reason):
        load_trained(_tampered(checkpoint, tmp_path, edit))


def _run_with_memory_cap(code: str) -> subprocess.CompletedProcess:
    """``code`` in a child whose address space may grow by at most 1 GB once torch is in."""
    script = textwrap.dedent("""
        import resource
        import torch
        import omnilatent.inference.trained, omnilatent.training.hook_training
        with open("/proc/self/status") as f:
            size = next(int(line.split()[1]) for line in f if line.startswith("VmSize:"))
        limit = size * 1024 + (1 << 30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    """) + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_a_model_bigger_than_its_weights_file_is_refused_before_it_is_built(checkpoint,
                                                                            tmp_path) -> None:
    """hidden_dim 8192 x 40 layers (about 32G parameters) declared over tiny weights: the
    header is compared with the shapes on the meta device, within 1 GB."""
    def big(state: dict) -> None:
        state["model_config"].update(hidden_dim=8192, num_layers=40, num_heads=32,
                                     mlp_hidden_dim=None)
        state["hooks"] = []

    folder = _tampered(checkpoint, tmp_path, big)
    done = _run_with_memory_cap(f"""
        from omnilatent.errors import CheckpointError
        try:
            omnilatent.inference.trained.load_trained({str(folder)!r})
        except CheckpointError as exc:
            print("REFUSED", exc)
    """)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "REFUSED" in done.stdout and "does not hold the tensors" in done.stdout


def test_hook_flags_are_capped_before_they_are_expanded() -> None:
    done = _run_with_memory_cap("""
        from omnilatent.errors import UsageError
        from omnilatent.training.hook_training import parse_hook_spec
        for spec in ("x:layers=0-1000000000", "x:tokens=20000000"):
            try:
                parse_hook_spec(spec)
            except UsageError as exc:
                print("REFUSED", exc)
    """)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("REFUSED") == 2
    with pytest.raises(UsageError, match="bad layers"):
        parse_hook_spec("x:layers=0-1000000000")
    with pytest.raises(UsageError, match="at most 4096"):
        parse_hook_spec("x:tokens=20000000")
    assert parse_hook_spec("x:tokens=4096,layers=0-511").layers == tuple(range(512))


def test_max_tokens_is_capped_before_anything_runs(tmp_path) -> None:
    with pytest.raises(ConfigError, match="max_tokens must be from 1 to 4096"):
        generate(None, "text", None, "text", tmp_path / "out.txt",  # type: ignore[arg-type]
                 max_tokens=1_000_000_000)
