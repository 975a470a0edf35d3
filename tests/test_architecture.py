"""The shape of the code, read with `ast` (nothing is imported): no import cycle among memformers' modules, no
private name imported across its modules, no function in memformers/ or pretrain/ longer than MAX_FUNCTION_LINES,
and a model (memformers.models) that imports nothing of training or data.

The checks are plain functions of a source root, so the last tests run them on a small made-up package too."""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "memformers"
MAX_FUNCTION_LINES = 80
MODEL = "memformers.models"
NOT_FOR_THE_MODEL = (
    "memformers.data", "memformers.training", "memformers.export", "memformers.noising", "memformers.recall",
)  # fmt: skip


@dataclass(frozen=True)
class Module:
    name: str  # dotted, e.g. memformers.data.sharding
    where: str  # the path shown in messages, relative to the folder holding the package
    is_package: bool  # an __init__.py
    tree: ast.Module


@dataclass(frozen=True)
class Import:
    """One imported module or name: `import a.b` (name None) or `from a.b import name` (level > 0 when relative)."""

    module: str | None
    name: str | None
    level: int
    line: int
    type_checking: bool  # inside an `if TYPE_CHECKING:` block


def python_files(root: Path) -> Iterator[Path]:
    yield from (path for path in sorted(root.rglob("*.py")) if "__pycache__" not in path.parts)


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), str(path))


def modules(package_dir: Path) -> dict[str, Module]:
    found = {}
    for path in python_files(package_dir):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        found[name] = Module(name, str(path.relative_to(package_dir.parent)), is_package, parse(path))
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(node: ast.AST, type_checking: bool = False) -> Iterator[Import]:
    """Every import statement under `node`: at module level and inside functions and classes alike."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import):
            for alias in child.names:
                yield Import(alias.name, None, 0, child.lineno, type_checking)
        elif isinstance(child, ast.ImportFrom):
            for alias in child.names:
                yield Import(child.module, alias.name, child.level, child.lineno, type_checking)
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for statement in child.body:
                yield from imports(ast.Module(body=[statement], type_ignores=[]), True)
            for statement in child.orelse:
                yield from imports(ast.Module(body=[statement], type_ignores=[]), type_checking)
        else:
            yield from imports(child, type_checking)


def source_module(module: Module, imp: Import) -> str:
    """The absolute dotted name an import reads from (`from .x import y` in a.b.c reads a.b.x)."""
    if imp.level == 0:
        return imp.module
    package = module.name if module.is_package else module.name.rpartition(".")[0]
    for _ in range(imp.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{imp.module}" if imp.module else package


def target(known: dict[str, Module], module: Module, imp: Import) -> str | None:
    """The known module an import depends on: for `from package import submodule`, the submodule; otherwise the
    module named or, where that is no module, its longest known prefix. None outside the known modules."""
    source = source_module(module, imp)
    if imp.name is not None and f"{source}.{imp.name}" in known:
        return f"{source}.{imp.name}"
    while source and source not in known:
        source = source.rpartition(".")[0]
    return source or None


def import_graph(known: dict[str, Module]) -> dict[str, dict[str, int]]:
    """module -> {module it imports: line of the first such import}, leaving out `if TYPE_CHECKING:` imports."""
    graph: dict[str, dict[str, int]] = {name: {} for name in known}
    for name, module in known.items():
        for imp in imports(module.tree):
            dep = None if imp.type_checking else target(known, module, imp)
            if dep is not None and dep != name:
                graph[name].setdefault(dep, imp.line)
    return graph


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's components of more than one module, each sorted, in sorted order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for dep in graph[node]:
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def shortest_cycle(graph: dict[str, dict[str, int]], component: list[str]) -> list[str]:
    """The shortest import path from the component's first module back to it (breadth first, inside it)."""
    start, within = component[0], set(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for dep in sorted(graph[node]):
            if dep == start:
                return [*paths[node], start]
            if dep in within and dep not in paths:
                paths[dep] = [*paths[node], dep]
                queue.append(dep)
    raise AssertionError(f"{start} is on no cycle")  # a component's members all are


def import_cycles(package_dir: Path) -> list[str]:
    """One entry per set of modules that import each other: its members, a shortest cycle, and where each import
    of that cycle is."""
    known = modules(package_dir)
    graph = import_graph(known)
    found = []
    for component in strongly_connected(graph):
        cycle = shortest_cycle(graph, component)
        steps = [f"{a} -> {b} at {known[a].where}:{graph[a][b]}" for a, b in zip(cycle, cycle[1:])]
        found.append(f"{', '.join(component)}: {' -> '.join(cycle)}\n      " + "\n      ".join(steps))
    return found


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_imports(package_dir: Path) -> list[str]:
    """`from package.x import _name` (or `from .x import _name`) in any module other than package.x itself. A
    package's private submodule (`from . import _impl`) may be imported inside that package."""
    known = modules(package_dir)
    package = package_dir.name
    found = []
    for name, module in known.items():
        for imp in imports(module.tree):
            if imp.name is None or not _private(imp.name):
                continue
            source = source_module(module, imp)
            if not (source == package or source.startswith(package + ".")) or source == name:
                continue
            if f"{source}.{imp.name}" in known and name.startswith(source + "."):
                continue
            found.append(f"{module.where}:{imp.line}: {name} imports {imp.name} from {source}")
    return found


def functions(node: ast.AST, prefix: str = "") -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """(qualified name, node) of every function and method, nested ones included."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield prefix + child.name, child
            yield from functions(child, f"{prefix}{child.name}.")
        elif isinstance(child, ast.ClassDef):
            yield from functions(child, f"{prefix}{child.name}.")
        else:
            yield from functions(child, prefix)


def long_functions(roots: list[Path], limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """file:function:lines of each function longer than `limit` lines, from its `def` line to its last line."""
    found = []
    for root in roots:
        for path in python_files(root):
            for name, node in functions(parse(path)):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    found.append(f"{path.relative_to(root.parent)}:{name}:{lines}")
    return found


def model_imports(package_dir: Path, model: str = MODEL, forbidden: tuple[str, ...] = NOT_FOR_THE_MODEL) -> list[str]:
    """Imports of `forbidden` packages by `model`'s modules; `if TYPE_CHECKING:` imports count here too."""
    found = []
    for name, module in modules(package_dir).items():
        if not (name == model or name.startswith(model + ".")):
            continue
        for imp in imports(module.tree):
            source = source_module(module, imp)
            dep = f"{source}.{imp.name}" if imp.name else source
            if any(dep == package or dep.startswith(package + ".") for package in forbidden):
                found.append(f"{module.where}:{imp.line}: {name} imports {dep}")
    return found


def fail_with(found: list[str], heading: str) -> None:
    if found:
        pytest.fail(heading + "\n" + "\n".join(f"  {line}" for line in found), pytrace=False)


# ----------------------------------------------------------------------------------------------- the checks


def test_no_import_cycles_among_memformers_modules():
    fail_with(
        import_cycles(REPO / PACKAGE),
        "import cycles among memformers' modules (imports inside functions count, `if TYPE_CHECKING:` ones don't):",
    )


def test_no_private_names_imported_across_memformers_modules():
    fail_with(
        private_imports(REPO / PACKAGE),
        "private names imported from another module (make them public, or move the code that uses them):",
    )


def test_no_function_longer_than_the_limit():
    fail_with(
        long_functions([REPO / PACKAGE, REPO / "pretrain"]),
        f"functions longer than {MAX_FUNCTION_LINES} lines in memformers/ and pretrain/ (file:function:lines):",
    )


def test_the_model_imports_nothing_of_training_or_data():
    fail_with(model_imports(REPO / PACKAGE), f"{MODEL} imports from {', '.join(NOT_FOR_THE_MODEL)}:")


# ------------------------------------------------------------------------------ the checks on a made-up package


def write_package(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return root / "pkg"


MADE_UP = {
    "pkg/__init__.py": "",
    # a package importing its own submodules is no cycle by itself
    "pkg/a/__init__.py": "from . import b\nfrom .c import C\n",
    # an `if TYPE_CHECKING:` import is no edge; a private submodule of its own package is fine
    "pkg/a/b.py": """\
        from typing import TYPE_CHECKING

        from . import _impl

        if TYPE_CHECKING:
            from pkg.a.c import C
        """,
    "pkg/a/_impl.py": "",
    # c -> d inside a function, as `from package import submodule`; d -> c at module level: a cycle
    "pkg/a/c.py": """\
        class C:
            def run(self):
                from pkg.a import d

                return d
        """,
    "pkg/a/d.py": "from .c import _helper, __version__\n",
    "pkg/data/__init__.py": "",
    "pkg/models/__init__.py": "",
    "pkg/models/m.py": """\
        from typing import TYPE_CHECKING

        from ..a import _impl

        if TYPE_CHECKING:
            from pkg.data import Batch
        """,
}


def test_the_cycle_check_on_a_made_up_package(tmp_path):
    assert import_cycles(write_package(tmp_path, MADE_UP)) == [
        "pkg.a.c, pkg.a.d: pkg.a.c -> pkg.a.d -> pkg.a.c\n      pkg.a.c -> pkg.a.d at pkg/a/c.py:3\n"
        "      pkg.a.d -> pkg.a.c at pkg/a/d.py:1"
    ]


def test_the_private_import_check_on_a_made_up_package(tmp_path):
    assert private_imports(write_package(tmp_path, MADE_UP)) == [
        "pkg/a/d.py:1: pkg.a.d imports _helper from pkg.a.c",
        "pkg/models/m.py:3: pkg.models.m imports _impl from pkg.a",
    ]


def test_the_model_check_on_a_made_up_package(tmp_path):
    found = model_imports(write_package(tmp_path, MADE_UP), "pkg.models", ("pkg.data",))
    assert found == ["pkg/models/m.py:6: pkg.models.m imports pkg.data.Batch"]


def test_the_length_check_on_a_made_up_package(tmp_path):
    fits = "def fits():\n" + "".join(f"    x{i} = {i}\n" for i in range(79))  # 80 lines
    too_long = "class K:\n    def long(self):\n" + "".join(f"        x{i} = {i}\n" for i in range(80))  # 81 lines
    package = write_package(tmp_path, {"pkg/f.py": fits + "\n\n" + too_long})
    assert long_functions([package]) == ["pkg/f.py:K.long:81"]
