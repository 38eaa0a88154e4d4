"""The package's import graph: layers only import downwards, no cycles, no
private names across packages (issue 23's structure bar, checked by walking
every module's syntax tree)."""

from __future__ import annotations

import ast
import collections
import re
from pathlib import Path

ROOT = Path(__file__).parent.parent / "pyroflows"
# lower layers first; a unit may import its own layer or any layer below
LAYERS = [
    {"validation", "training", "distributed"},
    {"nn"},
    {"transforms"},
    {"distributions", "testing"},
    {"flows"},  # vector presets: AutoFlow must not pull in the image stack
    {"images"},
    {"infer", "posteriors"},
    {"diagnostics", "matching", "discrete", "datasets"},
    {"cli", "fit_command", "__init__"},
]
LAYER = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}


def _unit(path: Path) -> str:
    """The top-level module or package a file belongs to."""
    parts = path.relative_to(ROOT).parts
    return parts[0] if len(parts) > 1 else path.stem


def _modules() -> dict[Path, ast.Module]:
    return {path: ast.parse(path.read_text()) for path in sorted(ROOT.rglob("*.py"))}


def _imports(tree: ast.Module):
    """(unit imported, names) for every ``import``/``from`` of pyroflows, torch or pyro."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            parts = node.module.split(".")
            if parts[0] == "pyroflows" and len(parts) == 1:  # from pyroflows import flows
                for alias in node.names:
                    yield alias.name, []
            else:
                yield (parts[1] if parts[0] == "pyroflows" else parts[0]), [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                yield (parts[1] if parts[0] == "pyroflows" and len(parts) > 1 else parts[0]), []


def _graph() -> dict[str, set[str]]:
    graph = collections.defaultdict(set)
    for path, tree in _modules().items():
        for unit, _ in _imports(tree):
            if unit in LAYER and unit != _unit(path):
                graph[_unit(path)].add(unit)
    return graph


def test_every_unit_has_a_layer():
    units = {_unit(path) for path in ROOT.rglob("*.py")}
    assert units <= set(LAYER), f"give these a layer: {sorted(units - set(LAYER))}"


def test_imports_only_go_down_the_layers():
    upward = [(a, b) for a, targets in _graph().items() for b in targets if LAYER[b] > LAYER[a]]
    assert not upward, f"imports from a lower layer to a higher one: {upward}"


def test_no_import_cycles_between_units():
    graph, state, cycles = _graph(), {}, []

    def visit(unit, trail):
        state[unit] = "open"
        for nxt in sorted(graph.get(unit, ())):
            if state.get(nxt) == "open":
                cycles.append(trail[trail.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[unit] = "done"

    for unit in sorted(graph):
        if unit not in state:
            visit(unit, [unit])
    assert not cycles, f"import cycles: {cycles}"


def test_no_private_name_is_imported_from_another_package_or_library():
    bad = []
    for path, tree in _modules().items():
        for unit, names in _imports(tree):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and unit != _unit(path):
                bad.append((str(path.relative_to(ROOT)), unit, private))
    assert not bad, f"private names imported across packages: {bad}"


def test_no_private_method_of_another_package_is_called():
    trees = _modules()
    owners = collections.defaultdict(set)  # private names defined per unit
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name.startswith("_"):
                owners[node.name].add(_unit(path))
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            for target in targets:  # self._x = ... makes _x the unit's own attribute
                if isinstance(target, ast.Attribute) and target.attr.startswith("_"):
                    owners[target.attr].add(_unit(path))
    bad = []
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                defined = owners.get(node.attr)
                if defined and _unit(path) not in defined:
                    bad.append((str(path.relative_to(ROOT)), node.attr, sorted(defined)))
    assert not bad, f"private methods used across packages: {bad}"


def test_no_file_is_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in ROOT.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"split these files: {long}"


def test_no_function_is_over_60_lines():
    long = [
        f"{path.relative_to(ROOT)}:{node.name} ({node.end_lineno - node.lineno + 1})"
        for path, tree in _modules().items()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno >= 60
    ]
    assert not long, f"split these functions (signature and docstring count): {long}"


# lines that repeat by nature: imports, parameter lists, closing brackets, docstring quotes, decorators
_BOILERPLATE = re.compile(
    r'^("""|\)|\]|\}|\)?:|def \w+\($|self,|from .* import .*|import .*|\w+(: [^=]+)?( = .+)?,|\) -> .*:|@\w+.*)$'
)


def _repeated_blocks(files: dict[str, str], size: int = 6) -> dict[tuple, list]:
    """Blocks of ``size`` non-blank, non-comment lines (half of them or more not boilerplate) found twice or more."""
    seen = collections.defaultdict(list)
    for name, text in files.items():
        lines = [
            (i + 1, s) for i, line in enumerate(text.splitlines()) if (s := line.strip()) and not s.startswith("#")
        ]
        for k in range(len(lines) - size + 1):
            block = tuple(s for _, s in lines[k : k + size])
            if sum(not _BOILERPLATE.match(s) for s in block) >= size // 2:
                seen[block].append(f"{name}:{lines[k][0]}")
    return {block: where for block, where in seen.items() if len(where) > 1}


def test_the_repeat_finder_finds_a_repeated_block():
    body = "\n".join(f"x{i} = f(x{i - 1}) + {i}" for i in range(1, 7))
    assert list(_repeated_blocks({"a.py": body, "b.py": "import os\n" + body}).values()) == [["a.py:1", "b.py:2"]]


def test_no_block_of_six_lines_is_repeated():
    files = {str(path.relative_to(ROOT)): path.read_text() for path in ROOT.rglob("*.py")}
    repeated = list(_repeated_blocks(files).values())
    assert not repeated, f"factor out these repeated blocks: {repeated}"


def test_each_public_name_has_one_home():
    """A name is exported (``__all__``) by one subpackage only; the top-level
    package's flow shortcuts (``pyroflows.nsf`` ...) are the one exception."""
    import importlib
    import pkgutil

    import pyroflows

    homes = collections.defaultdict(list)
    for info in pkgutil.iter_modules(pyroflows.__path__):
        module = importlib.import_module(f"pyroflows.{info.name}")
        for name in getattr(module, "__all__", ()):
            homes[name].append(info.name)
    shared = {name: units for name, units in homes.items() if len(units) > 1}
    assert not shared, f"names exported by more than one subpackage: {shared}"
    assert sum(map(len, homes.values())) <= 136, "the public surface grew: export only what users call"
