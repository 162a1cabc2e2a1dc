"""The import graph of the pack, read from the source (ast), never by importing it.

Every ``import`` statement counts, at module level or inside a function. The
rules (ddcolor/__init__.py states them):

* no module imports itself through others: the graph has no cycle;
* the library (``ddcolor/`` outside ``ddcolor/cli``) never imports the
  application (``ddcolor.cli``) or the nodes; ``ddcolor/__main__.py``, the
  launcher of ``python -m ddcolor``, is the application's and is exempt;
* the application (``ddcolor/cli``, ``nodes/`` and the pack's ``__init__.py``)
  takes from the library only the names in ``ddcolor.__all__`` and the modules
  of ``ddcolor.PUBLIC_MODULES`` (names in their ``__all__`` where they have one).
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import ddcolor

REPO = Path(__file__).resolve().parent.parent
LAUNCHER = "ddcolor.__main__"


def module_name(path: Path) -> str:
    """Dotted name relative to the repository root; the pack's own __init__.py is ""."""
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_modules() -> dict[str, Path]:
    files = [REPO / "__init__.py", *(REPO / "nodes").rglob("*.py"), *(REPO / "ddcolor").rglob("*.py")]
    return {module_name(path): path for path in files}


MODULES = source_modules()


def package_of(name: str) -> str:
    return name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]


def imports(name: str) -> list[tuple[str, str | None, int]]:
    """(module, name taken from it or None, line) for every import of a pack module in ``name``."""
    tree = ast.parse(MODULES[name].read_text(), filename=str(MODULES[name]))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, None, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = package_of(name).split(".") if package_of(name) else []
                anchor = package[: len(package) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                submodule = f"{base}.{alias.name}" if base else alias.name
                found.append((submodule, None, node.lineno) if submodule in MODULES else (base, alias.name, node.lineno))
    ours = ("ddcolor", "nodes")
    return [(module, taken, line) for module, taken, line in found if module.split(".")[0] in ours or module == ""]


def attributes_of_ddcolor(name: str) -> list[tuple[str, int]]:
    """``ddcolor.X`` in a module that does ``import ddcolor``: each X, with its line."""
    tree = ast.parse(MODULES[name].read_text())
    return [
        (node.attr, node.lineno)
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "ddcolor"
    ]


def is_application(name: str) -> bool:
    return name == "" or name == LAUNCHER or name.split(".")[0] == "nodes" or name.startswith("ddcolor.cli")


def test_the_sources_are_found():
    assert {"", "nodes.colorize", "ddcolor", "ddcolor.cli.commands", "ddcolor.cli.ray_runner", "ddcolor.video"} <= set(MODULES)
    found = {(m, t) for m, t, _ in imports("ddcolor.cli.commands")}
    # from .batch import Job; from . import image_step; from .. import RECOMMENDED_STRENGTH
    assert {("ddcolor.cli.batch", "Job"), ("ddcolor.cli.image_step", None), ("ddcolor", "RECOMMENDED_STRENGTH")} <= found
    assert ("ddcolor", "PUBLISHED") in {(m, t) for m, t, _ in imports("nodes.models")}  # from ..ddcolor import PUBLISHED


def test_the_import_graph_has_no_cycle():
    graph = {name: {module for module, _, _ in imports(name) if module in MODULES and module != name} for name in MODULES}
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                cycle = path[path.index(target):] + [target]
                pytest.fail("import cycle: " + " -> ".join(m or "<pack>" for m in cycle))
            if target not in state:
                visit(target, path + [target])
        state[name] = "done"

    for name in sorted(MODULES):
        if name not in state:
            visit(name, [name])


def test_the_library_never_imports_the_application():
    offences = [
        f"{MODULES[name].relative_to(REPO)}:{line} imports {module}"
        for name in MODULES
        if name.startswith("ddcolor") and not is_application(name)
        for module, _, line in imports(name)
        if module.startswith(("ddcolor.cli", "nodes")) or module == ""
    ]
    assert not offences, "\n".join(dict.fromkeys(offences))


def public_names(module: str) -> set[str] | None:
    """A public module's ``__all__``, or None when it has none (then all its names are public)."""
    return getattr(importlib.import_module(module), "__all__", None)


def test_the_application_takes_only_the_public_face_of_the_library():
    public = set(ddcolor.__all__)
    public_modules = set(ddcolor.PUBLIC_MODULES)
    offences = []
    for name in MODULES:
        if not is_application(name):
            continue
        where = MODULES[name].relative_to(REPO)
        for module, taken, line in imports(name):
            if not module.startswith("ddcolor") or module.startswith("ddcolor.cli") or name == LAUNCHER:
                continue
            if module == "ddcolor":
                if taken is not None and taken not in public:
                    offences.append(f"{where}:{line} takes ddcolor.{taken}, not in ddcolor.__all__")
            elif module not in public_modules:
                offences.append(f"{where}:{line} imports {module}, not a public module ({', '.join(sorted(public_modules))})")
            elif taken is not None and public_names(module) is not None and taken not in public_names(module):
                offences.append(f"{where}:{line} takes {module}.{taken}, not in its __all__")
        for attribute, line in attributes_of_ddcolor(name):
            if attribute not in public and f"ddcolor.{attribute}" not in public_modules:
                offences.append(f"{where}:{line} uses ddcolor.{attribute}, not in ddcolor.__all__")
    assert not offences, "\n".join(dict.fromkeys(offences))


def test_the_public_names_exist():
    assert not [name for name in ddcolor.__all__ if not hasattr(ddcolor, name)]
    for module in ddcolor.PUBLIC_MODULES:
        names = public_names(module) or []
        assert not [n for n in names if not hasattr(importlib.import_module(module), n)], module
