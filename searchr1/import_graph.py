"""Which first-party modules a module can import, read from the source with `ast` (nothing is imported).

Stage cache keys hash the source of everything a stage's build function can reach, so this counts
every import statement, including those inside functions (the code imports heavy modules lazily)
and those under `if`/`try`; only `if TYPE_CHECKING:` blocks are skipped, since they never run.
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

FIRST_PARTY = ("searchr1", "tasks", "flows")

Graph = dict[str, set[str]]


def package_dirs(names: Iterable[str] = FIRST_PARTY) -> dict[str, Path]:
    """{top-level package: its folder}, found by the import system without importing anything."""
    out: dict[str, Path] = {}
    for name in names:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError(f"first-party package {name!r} not found on sys.path; expected a folder "
                                      f"{name}/ with __init__.py (run from the project, or `pip install -e .`)")
        out[name] = Path(next(iter(spec.submodule_search_locations)))
    return out


def module_files(packages: Mapping[str, Path]) -> dict[str, Path]:
    """{dotted module name: source file} for every .py file under the given package folders."""
    out: dict[str, Path] = {}
    for name, root in packages.items():
        for path in sorted(Path(root).rglob("*.py")):
            rel = path.relative_to(root).with_suffix("")
            if "__pycache__" in rel.parts:
                continue
            parts = [name, *rel.parts]
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST, module_level_only: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if module_level_only and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue  # runs when called, not when the module is imported
        stack.extend(ast.iter_child_nodes(node))


def _with_parents(name: str) -> list[str]:
    """Importing a.b.c runs a, a.b and a.b.c."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def imports_of(module: str, path: Path, known: Iterable[str], *, module_level_only: bool = False) -> set[str]:
    """The modules among `known` that `module` (source at `path`) imports."""
    known = set(known)
    is_package = path.name == "__init__.py"
    tree = ast.parse(Path(path).read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in _import_nodes(tree, module_level_only):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.update(_with_parents(alias.name))
            continue
        if node.level:  # relative: resolve against this module's package
            package = module.split(".") if is_package else module.split(".")[:-1]
            base = ".".join(package[:len(package) - (node.level - 1)])
            target = f"{base}.{node.module}" if node.module else base
        else:
            target = node.module or ""
        found.update(_with_parents(target))
        found.update(f"{target}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
    return {m for m in found if m in known and m != module}


def import_graph(packages: Mapping[str, Path] | None = None, *, module_level_only: bool = False) -> Graph:
    """{module: first-party modules it imports} over the given packages (default: this project's)."""
    files = module_files(packages if packages is not None else package_dirs())
    return {name: imports_of(name, path, files, module_level_only=module_level_only)
            for name, path in files.items()}


def closure(graph: Mapping[str, set[str]], roots: Iterable[str], stop: Iterable[str] = ()) -> set[str]:
    """Every module reachable from `roots`; modules in `stop` are neither included nor followed."""
    stop = set(stop)
    seen: set[str] = set()
    todo = [r for r in roots if r not in stop]
    for root in todo:
        if root not in graph:
            raise KeyError(f"{root!r} is not a first-party module (known packages: "
                           f"{sorted({m.split('.')[0] for m in graph})})")
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        todo.extend(m for m in graph.get(mod, ()) if m not in seen and m not in stop)
    return seen


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (each is at least one import cycle), largest first."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan; the graphs here are ~100 nodes, so recursion depth is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(groups, key=len, reverse=True)


def package_graph(graph: Mapping[str, set[str]], depth: int = 2) -> Graph:
    """The module graph collapsed to packages (`searchr1.agent.trace` -> `searchr1.agent` at depth 2)."""
    def name(m: str) -> str:
        return ".".join(m.split(".")[:depth])

    out: Graph = {}
    for mod, deps in graph.items():
        out.setdefault(name(mod), set()).update(name(d) for d in deps if name(d) != name(mod))
    return out


def elementary_cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Every simple cycle, each listed once from its smallest node; exponential, meant for package graphs."""
    found: list[list[str]] = []

    def walk(start: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(path[-1], ())):
            if nxt == start:
                found.append(list(path))
            elif nxt > start and nxt not in path:
                walk(start, [*path, nxt])

    for start in sorted(graph):
        walk(start, [start])
    return found


def main() -> None:
    """Print the package's import cycles: `python -m searchr1.import_graph`."""
    for label, only_top in (("imports run at import time", True), ("all imports, lazy ones too", False)):
        graph = import_graph(module_level_only=only_top)
        groups = cycles(graph)
        pkg = elementary_cycles(package_graph(graph))
        print(f"{label}: {len(groups)} module cycle group(s) "
              f"({sum(len(g) for g in groups)} modules); {len(pkg)} package-level cycle(s)")
        for cycle in pkg:
            print("   ", " -> ".join([*cycle, cycle[0]]))


if __name__ == "__main__":
    main()
