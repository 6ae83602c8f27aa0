"""The structure of `omnilatent/`: no import cycle between its packages (model, checkpoint,
training, evaluation, inference and the top-level modules), so each layer can be read and
tested after the ones below it; and no module over 500 lines."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 500


def package_imports(root: Path) -> dict[str, set[str]]:
    """Package of `omnilatent` (``training``, ``config``, ...) -> the others its modules
    import anywhere in their source (a lazy import is still a dependency)."""
    graph: dict[str, set[str]] = {}
    for path in (root / "omnilatent").rglob("*.py"):
        parts = path.relative_to(root / "omnilatent").with_suffix("").parts
        if parts == ("__init__",):
            continue  # the package's own re-exports sit above everything
        package = parts[0]
        targets = graph.setdefault(package, set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module
                     and node.level == 0 else [])
            for name in names:
                first, _, rest = name.partition(".")
                if first == "omnilatent" and rest:
                    targets.add(rest.split(".")[0])
        targets.discard(package)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        return list(exc.args[1])
    return None


def test_no_import_cycle_between_packages() -> None:
    graph = package_imports(ROOT)
    assert {"training", "evaluation", "inference", "checkpoint", "model"} <= set(graph)
    assert find_cycle(graph) is None


def test_a_cycle_is_found() -> None:
    # The check above can fail: a cycle through three packages is caught.
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) is not None


def test_no_module_over_500_lines() -> None:
    long = {str(path.relative_to(ROOT)): len(path.read_text(encoding="utf-8").splitlines())
            for path in (ROOT / "omnilatent").rglob("*.py")}
    assert {path: n for path, n in long.items() if n > MAX_LINES} == {}
