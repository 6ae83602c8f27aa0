"""`omni prepare` and `omni inspect` never import torch, in any of their processes.

torch takes seconds to import (2.3 s of a 2.8 s prepare of one 3 s video before issue 10) and
memory in every worker. Each command runs for real in a subprocess whose interpreters (the
CLI, the forkserver) load a `sitecustomize` that puts an import watcher first on `sys.meta_path`:
it appends a line to a log for every attempt to import torch (and for `pipeline.prepare.sample`, to
prove it is active in the forkserver), and lets the import go on. Workers are forked from the
forkserver and inherit the watcher, so an import anywhere in a worker's life is logged too;
at exit, each interpreter that exits normally (the CLI) logs whether torch is in `sys.modules`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from media import make_video

REPO = Path(__file__).resolve().parents[1]

WATCHER = '''
import atexit
import os
import sys

_LOG = os.environ["OMNI_IMPORT_LOG"]


def _log(line):
    with open(_LOG, "a", encoding="utf-8") as log:
        log.write(f"{os.getpid()} {line}\\n")


class _ImportWatcher:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch" or name == "pipeline.prepare.sample":
            _log(f"import {name}")
        return None


sys.meta_path.insert(0, _ImportWatcher())
atexit.register(lambda: _log(f"exit torch-loaded={'torch' in sys.modules}"))
'''


def _omni(args: list[str], site: Path, log: Path) -> subprocess.CompletedProcess[str]:
    """Run `omni ARGS` (the console script's entry point) with the watcher."""
    env = {**os.environ, "OMNI_IMPORT_LOG": str(log), "COLUMNS": "200",
           "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    return subprocess.run([sys.executable, "-c", "from cli.app import main; main()", *args],
                          cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_prepare_and_inspect_never_import_torch(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(WATCHER, encoding="utf-8")
    videos = tmp_path / "videos"
    videos.mkdir()
    make_video(videos / "one.mp4", duration=3.0, size=(64, 48))  # with a tone: the mel runs
    out = tmp_path / "out"

    log = tmp_path / "prepare.log"
    done = _omni(["prepare", str(videos), str(out), "--workers", "1", "--decoder-threads", "1",
                  "--json"], site, log)
    assert done.returncode == 0, done.stderr
    totals = json.loads(done.stdout)["totals"]
    assert totals["prepared"] == 1 and totals["clips"] == 2
    lines = log.read_text(encoding="utf-8").splitlines()
    assert not [line for line in lines if " import torch" in line], lines
    # The watcher ran in the forkserver the worker was forked from (it preloads the sample
    # code), and the CLI process exited normally without torch.
    assert any(line.endswith(" import pipeline.prepare.sample") for line in lines), lines
    assert [line for line in lines if " exit " in line] != []
    assert all(line.endswith("torch-loaded=False") for line in lines if " exit " in line)

    log = tmp_path / "inspect.log"
    done = _omni(["inspect", str(out), "--verify", "--workers", "2", "--json"], site, log)
    assert done.returncode == 0, done.stderr
    lines = log.read_text(encoding="utf-8").splitlines()
    assert not [line for line in lines if " import torch" in line], lines
    assert [line for line in lines if " exit " in line] != []
    assert all(line.endswith("torch-loaded=False") for line in lines if " exit " in line)


def test_decoder_threads_are_validated() -> None:
    from pipeline.errors import ConfigError
    from pipeline.prepare.run import RunOptions

    assert RunOptions(workers=2, threads=1).threads == 1
    with pytest.raises(ConfigError, match="threads must be >= 1"):
        RunOptions(threads=0)
