"""Measure the code's shape: import graph, cycles, layer breaches, biggest files and functions, shared names.

    .venv/bin/python scripts/architecture.py [--root DIR] [--json]

``--root`` measures another checkout (for a before/after comparison, e.g. a ``git worktree`` of an older
commit). ``tests/test_architecture.py`` asserts the rules on this checkout; the README quotes the figures.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = ("contracts", "pipeline", "serving", "lockgate", "infra")
# Which of our packages each package may import (DESIGN.md: "Imports flow one way"). ``contracts`` is the
# bottom; ``serving`` imports neither pipeline nor infra; ``pipeline`` may call serving; infra may use
# serving's renderer and the pipeline's config models; the CLI (``lockgate``) may use everything but infra.
ALLOWED: dict[str, frozenset[str]] = {
    "contracts": frozenset(),
    "serving": frozenset({"contracts"}),
    "pipeline": frozenset({"contracts", "serving"}),
    "infra": frozenset({"contracts", "serving", "pipeline"}),
    "lockgate": frozenset({"contracts", "serving", "pipeline"}),
}
# Names that must have one definition (a module-level assignment or class), wherever they are used.
SHARED_LITERALS = ("champion", "candidate", "previous")
SHARED_PREFIXES = ("LOCKGATE_",)


@dataclass
class Module:
    """One module of ours: its dotted name, file, imports of our modules (module-level and lazy)."""

    name: str
    path: Path
    imports: set[str] = field(default_factory=set)
    lazy_imports: set[str] = field(default_factory=set)


def module_name(root: Path, path: Path) -> str:
    """``pipeline/config/__init__.py`` → ``pipeline.config``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files(root: Path) -> Iterable[Path]:
    """Every Python file of our packages under ``root``."""
    for package in PACKAGES:
        if (root / package).is_dir():
            yield from sorted((root / package).rglob("*.py"))


def _resolve(name: str, known: set[str]) -> str | None:
    """The longest known module that ``name`` is or lies in (``serving.desired.load`` → ``serving.desired``)."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def read_modules(root: Path) -> dict[str, Module]:
    """Parse every module and record which of our modules it imports, at module level or inside a function."""
    modules = {module_name(root, path): Module(module_name(root, path), path) for path in source_files(root)}
    known = set(modules)
    for module in modules.values():
        tree = ast.parse(module.path.read_text())
        top_level = set(map(id, tree.body))
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
            else:
                continue
            lazy = id(node) not in top_level and not _under_type_checking(tree, node)
            for target in targets:
                resolved = _resolve(target, known)
                if resolved and resolved != module.name:
                    (module.lazy_imports if lazy else module.imports).add(resolved)
        module.lazy_imports -= module.imports
    return modules


def _under_type_checking(tree: ast.Module, node: ast.AST) -> bool:
    """True when ``node`` sits in a module-level ``if TYPE_CHECKING:`` block (no import at run time)."""
    for statement in tree.body:
        if isinstance(statement, ast.If) and "TYPE_CHECKING" in ast.unparse(statement.test):
            if any(child is node for child in ast.walk(statement)):
                return True
    return False


def cycles(modules: dict[str, Module], lazy: bool = False) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), i.e. the import cycles."""
    graph = {name: m.imports | (m.lazy_imports if lazy else set()) for name, m in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph.get(node, ())):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for name in sorted(graph):
        if name not in index:
            visit(name)
    return found


def layer_breaches(modules: dict[str, Module]) -> list[str]:
    """Every import (module-level or lazy) from a package into one it may not import."""
    breaches = []
    for module in modules.values():
        package = module.name.split(".")[0]
        for target in sorted(module.imports | module.lazy_imports):
            other = target.split(".")[0]
            if other != package and other not in ALLOWED[package]:
                breaches.append(f"{module.name} imports {target}")
    return breaches


def biggest_functions(root: Path, top: int = 8) -> list[tuple[str, int]]:
    """The longest functions (``module:function``, lines)."""
    sizes = []
    for path in source_files(root):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno:
                sizes.append((f"{module_name(root, path)}:{node.name}", node.end_lineno - node.lineno + 1))
    return sorted(sizes, key=lambda item: -item[1])[:top]


def biggest_files(root: Path, top: int = 8) -> list[tuple[str, int]]:
    """The longest files (path, lines)."""
    sizes = [(str(path.relative_to(root)), len(path.read_text().splitlines())) for path in source_files(root)]
    return sorted(sizes, key=lambda item: -item[1])[:top]


def shared_definitions(root: Path) -> dict[str, list[str]]:
    """Where each shared word is defined as a constant: an alias literal or a ``LOCKGATE_*`` variable name.

    A definition is a module-level assignment, or an enum member, whose value is the literal; more than one
    place per word means the vocabulary is written twice.
    """
    found: dict[str, list[str]] = {}
    for path in source_files(root):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.Assign):
                continue
            values = node.value.elts if isinstance(node.value, ast.Tuple) else [node.value]
            for value in values:
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    word = value.value
                    if word in SHARED_LITERALS or word.startswith(SHARED_PREFIXES):
                        found.setdefault(word, []).append(f"{path.relative_to(root)}:{node.lineno}")
    return dict(sorted(found.items()))


def shared_literal_uses(root: Path) -> dict[str, int]:
    """How many times each shared word is written as a bare string constant anywhere (docstrings aside)."""
    counts: dict[str, int] = {}
    for path in source_files(root):
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                word = node.value
                if word in SHARED_LITERALS or (word.startswith(SHARED_PREFIXES) and word.isupper()):
                    counts[word] = counts.get(word, 0) + 1
    return dict(sorted(counts.items()))


def measure(root: Path) -> dict[str, object]:
    """Every figure the README's Architecture section quotes."""
    modules = read_modules(root)
    definitions = shared_definitions(root)
    return {
        "modules": len(modules),
        "cycles_module_level": cycles(modules),
        "cycles_with_lazy_imports": cycles(modules, lazy=True),
        "layer_breaches": layer_breaches(modules),
        "biggest_files": biggest_files(root),
        "biggest_functions": biggest_functions(root),
        "shared_definitions": definitions,
        "words_defined_more_than_once": sorted(w for w, places in definitions.items() if len(places) > 1),
        "shared_literal_uses": shared_literal_uses(root),
    }


def main(argv: list[str] | None = None) -> int:
    """Print the figures as text or JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    figures = measure(args.root.resolve())
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    for key, value in figures.items():
        if isinstance(value, list | dict) and value:
            print(f"{key}:")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for name, item in items:
                print(f"  {name}: {item}" if isinstance(value, dict) else f"  {item}")
        else:
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
