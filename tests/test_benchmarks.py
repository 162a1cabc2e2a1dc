"""Benchmarks share helpers with the tests through tests/support.py, never by importing a test module.

A benchmark that imports tests/test_*.py or conftest.py runs that file's
module-level code and breaks whenever a test is renamed or moved.
"""

from __future__ import annotations

import ast

import pytest

from tests.support import REPO


def imported_test_modules(source: str) -> list[str]:
    """The test modules and conftests under tests/ that ``source`` imports, at any depth."""
    imported = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.append(node.module)
            imported += [f"{node.module}.{alias.name}" for alias in node.names]  # `from tests import test_x`
    modules = {".".join(name.split(".")[:2]) for name in imported if name.startswith("tests.")}
    return sorted(name for name in modules if name.split(".")[1].startswith(("test_", "conftest")))


@pytest.mark.parametrize(
    "source, found",
    [
        ("from tests.support import calibrated_checkpoint\nfrom tests import calibrated, oracle", []),
        ("import tests.support\nfrom tests.support import probe as test_probe", []),
        ("from tests.conftest import calibrated_checkpoint", ["tests.conftest"]),
        ("def main():\n    from tests.test_precision import fixture_inputs", ["tests.test_precision"]),
        ("from tests import test_pipeline, support", ["tests.test_pipeline"]),
        ("import tests.test_cli as cli", ["tests.test_cli"]),
    ],
)
def test_the_check_finds_test_modules_wherever_imported(source, found):
    assert imported_test_modules(source) == found


def test_no_benchmark_imports_a_test_module_or_conftest():
    scripts = sorted((REPO / "benchmarks").glob("*.py"))
    assert scripts
    offenders = {script.name: imported_test_modules(script.read_text()) for script in scripts}
    assert not {name: found for name, found in offenders.items() if found}, "import these from tests/support.py instead"
