"""The package's layering: no module imports one that imports it back (lazy imports inside functions
included), and the drawing of pictures knows nothing of training."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "videoiq"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """The videoiq modules ``path`` imports anywhere in its body; ``from pkg import mod`` counts as ``pkg.mod``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: _imports(path, name, set(paths)) for name, path in paths.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle among modules (package ``__init__`` re-exports excluded: they import down by design)."""
    edges = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}
    done, stack = set(), []

    def visit(m):
        if m in stack:
            return stack[stack.index(m):] + [m]
        if m in done:
            return None
        stack.append(m)
        for d in sorted(edges[m]):
            if (found := visit(d)) is not None:
                return found
        stack.pop()
        done.add(m)
        return None

    for m in sorted(edges):
        if (found := visit(m)) is not None:
            return found
    return None


def test_the_graph_sees_lazy_and_relative_imports():
    graph = _graph()
    assert "videoiq.train.scoring" in graph["videoiq.train.pictures"]  # a relative import at module level
    assert "videoiq.data.synthetic" in graph["videoiq.cli"]  # an import inside a function
    circle = {"videoiq.strips": {"videoiq.train.scoring"}, "videoiq.train.scoring": {"videoiq.strips"},
              "videoiq.train": {"videoiq.train.scoring"}}
    assert _cycle(circle) == ["videoiq.strips", "videoiq.train.scoring", "videoiq.strips"]
    assert _cycle({**circle, "videoiq.strips": set()}) is None


def test_no_module_imports_one_that_imports_it_back():
    assert _cycle(_graph()) is None, " -> ".join(_cycle(_graph()))


def test_strips_only_draws():
    assert not any(m.startswith("videoiq.train") for m in _graph()["videoiq.strips"])
