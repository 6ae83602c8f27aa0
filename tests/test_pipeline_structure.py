"""The pipeline's module structure: light modules stay light, and no two modules import each other.

Light: `pipeline.shards.shardset` (the loader's and `omni inspect`'s shard lists) and
`shards.manifest` (read by training, eval and the prepare CLI) load no decoding stack. Each is
imported in a fresh interpreter, because this test process has long loaded everything.

Acyclic: every import of a pipeline module by another, at module level or inside a function
(a lazy import is still a dependency), forms a graph without cycles, so each module can be read
and tested after the ones it uses; so do its stages (`media`, `shards`, `prepare`, `loader`,
...), and it stays small enough to read: few top-level modules, none over 500 lines.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The decoding stack (and torch, which only the loader's webdataset brings).
HEAVY = ("av", "numpy", "PIL", "pysrt", "webvtt", "torch", "webdataset")


def _heavy_modules_after_import(module: str) -> list[str]:
    code = (f"import sys, json; import {module}; "
            f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, check=True)
    loaded = set(json.loads(done.stdout))
    return sorted(name for name in HEAVY if name in loaded)


@pytest.mark.parametrize("module", ["pipeline.shards.shardset", "pipeline.shards.manifest",
                                    "pipeline.shards.outcome"])
def test_light_modules_load_no_decoding_stack(module: str) -> None:
    assert _heavy_modules_after_import(module) == []


def test_a_heavy_module_is_seen_as_heavy() -> None:
    # The check above can fail: a module that does load the stack is caught.
    assert {"av", "numpy", "PIL"} <= set(_heavy_modules_after_import("pipeline.shards.decode"))


def pipeline_imports(root: Path) -> dict[str, set[str]]:
    """Module name -> the pipeline modules it imports anywhere in its source."""
    files = {_module_name(path, root): path for path in (root / "pipeline").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from pipeline import decode_pyav` imports a module, not a name.
                for alias in node.names:
                    submodule = f"{node.module}.{alias.name}"
                    targets.add(submodule if submodule in files else node.module)
        graph[name] = {target for target in targets if target in files and target != name}
    return graph


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, str] = {}  # "open" while on the path, "done" once fully explored
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)) is not None:
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_pipeline_modules_import_each_other_in_one_direction() -> None:
    graph = pipeline_imports(ROOT)
    assert {"pipeline.media.decode", "pipeline.shards.schema", "pipeline.loader"} <= set(graph)
    assert find_cycle(graph) is None


def test_find_cycle_finds_lazy_and_indirect_cycles(tmp_path: Path) -> None:
    package = tmp_path / "pipeline"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pipeline.b import thing\n")
    (package / "b.py").write_text("def f():\n    from pipeline import c\n")
    (package / "c.py").write_text("import pipeline.a\n")
    (package / "d.py").write_text("from pipeline.a import thing\n")
    graph = pipeline_imports(tmp_path)
    assert graph["pipeline.b"] == {"pipeline.c"}
    assert find_cycle(graph) == ["pipeline.a", "pipeline.b", "pipeline.c", "pipeline.a"]
    (package / "c.py").write_text("")
    assert find_cycle(pipeline_imports(tmp_path)) is None


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The module graph collapsed to `pipeline`'s subpackages (a top-level module is its own)."""
    def package(module: str) -> str:
        return ".".join(module.split(".")[:2])

    packages: dict[str, set[str]] = {}
    for module, targets in graph.items():
        packages.setdefault(package(module), set()).update(
            package(target) for target in targets if package(target) != package(module))
    return packages


def test_pipeline_packages_import_each_other_in_one_direction() -> None:
    graph = package_graph(pipeline_imports(ROOT))
    assert {"pipeline.media", "pipeline.shards", "pipeline.prepare", "pipeline.loader"} <= set(
        graph)
    assert find_cycle(graph) is None


def test_find_cycle_finds_package_cycles(tmp_path: Path) -> None:
    for package, source in (("a", "from pipeline.b.y import x\n"), ("b", "import pipeline.a.z\n")):
        (tmp_path / "pipeline" / package).mkdir(parents=True)
        (tmp_path / "pipeline" / package / "x.py").write_text(source)
        (tmp_path / "pipeline" / package / ("y.py" if package == "b" else "z.py")).write_text("")
    graph = pipeline_imports(tmp_path)
    assert find_cycle(graph) is None  # no module cycle: a.x -> b.y, b.x -> a.z
    assert find_cycle(package_graph(graph)) == ["pipeline.a", "pipeline.b", "pipeline.a"]


def test_pipeline_tells_its_stages_at_a_glance() -> None:
    top_level = sorted(path.name for path in (ROOT / "pipeline").glob("*.py"))
    assert len(top_level) <= 12, top_level
    long = {str(path.relative_to(ROOT)): lines for path in (ROOT / "pipeline").rglob("*.py")
            if (lines := len(path.read_text(encoding="utf-8").splitlines())) > 500}
    assert long == {}
