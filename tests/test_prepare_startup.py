"""The parent of `omni prepare` starts light: numpy, PyAV and PIL load only in the forkserver.

The parent plans, runs workers and writes stats; importing the decoding stack there as well
cost ~0.5 s of a ~1.2 s run on one short video, spent again, serially, by the forkserver.
A `sitecustomize` watcher logs, per process, the first attempt to import each heavy package
and the worker environment that process runs under; workers fork from the forkserver with
those packages loaded, so only the CLI process and the forkserver can log them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from media import make_video

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("av", "PIL", "numpy", "pipeline.media.decode", "pipeline.shards.encode",
         "pipeline.media.subtitles")

WATCHER = '''
import os
import sys

_LOG = os.environ["OMNI_IMPORT_LOG"]
_HEAVY = set(os.environ["OMNI_HEAVY"].split())


class _ImportWatcher:
    def find_spec(self, name, path=None, target=None):
        if name in _HEAVY:
            blas = os.environ.get("OPENBLAS_NUM_THREADS")
            with open(_LOG, "a", encoding="utf-8") as log:
                log.write(f"{os.getpid()} {name} blas={blas}\\n")
        return None


sys.meta_path.insert(0, _ImportWatcher())
'''


def test_import_of_the_prepare_command_loads_no_decoding_stack() -> None:
    code = f"import sys, cli.prepare; print([m for m in {HEAVY!r} if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"


def test_prepare_parent_never_imports_the_decoding_stack(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(WATCHER, encoding="utf-8")
    videos = tmp_path / "videos"
    videos.mkdir()
    make_video(videos / "one.mp4", duration=3.0, size=(64, 48))
    log = tmp_path / "imports.log"
    env = {**os.environ, "OMNI_IMPORT_LOG": str(log), "OMNI_HEAVY": " ".join(HEAVY),
           "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    env.pop("OPENBLAS_NUM_THREADS", None)
    cli = subprocess.Popen([sys.executable, "-c", "from cli.app import main; main()", "prepare",
                            str(videos), str(tmp_path / "out"), "--workers", "1", "--json"],
                           cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    stdout, stderr = cli.communicate(timeout=120)
    assert cli.returncode == 0, stderr
    assert json.loads(stdout)["totals"]["prepared"] == 1

    lines = [line.split() for line in log.read_text(encoding="utf-8").splitlines()]
    assert [line for line in lines if int(line[0]) == cli.pid] == []
    # The decoding stack was loaded once, by the forkserver, under the workers' environment.
    server = {(name, blas) for pid, name, blas in lines if int(pid) != cli.pid}
    assert server == {(name, "blas=1") for name in HEAVY}
