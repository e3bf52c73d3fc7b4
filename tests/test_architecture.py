"""The layout stays honest: services never import each other, the kernel imports no service.

Every ``.py`` file of the repository is parsed with ``ast``; ``import x``, ``from x import y`` and
``importlib.import_module("x")`` with a literal name all count, ``TYPE_CHECKING`` imports too.
Only the composition root (``embedded/``) may import several services.
"""

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared import registry

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ("gateway", *(entry.package for entry in registry.SERVICES))
COMPOSITION_ROOT = "embedded"
KERNEL = "shared"
SKIPPED_DIRS = {".venv", "venv", ".git", "node_modules", "build", "dist", "__pycache__"}


def python_files(top: Path) -> Iterator[Path]:
    for path in sorted(top.rglob("*.py")):
        parts = set(path.relative_to(ROOT).parts)
        if parts & SKIPPED_DIRS or any(part.endswith(".egg-info") or part.startswith(".") for part in parts):
            continue
        yield path


def imported_packages(path: Path) -> set[str]:
    """The top-level packages a module imports (relative imports stay inside its own package)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id)
            in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.add(node.args[0].value.split(".")[0])
    return found


def package_of(path: Path) -> str:
    return path.relative_to(ROOT).parts[0]


def imports_by_file() -> dict[Path, set[str]]:
    return {path: imported_packages(path) for path in python_files(ROOT)}


IMPORTS = imports_by_file()


def offending(package: str, forbidden: set[str]) -> list[str]:
    return sorted(
        f"{path.relative_to(ROOT)} imports {', '.join(sorted(packages & forbidden))}"
        for path, packages in IMPORTS.items()
        if package_of(path) == package and packages & forbidden
    )


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_imports_no_other_service(service: str) -> None:
    others = set(SERVICES) - {service}
    assert offending(service, others | {COMPOSITION_ROOT}) == []


def test_the_kernel_imports_no_service() -> None:
    assert offending(KERNEL, set(SERVICES) | {COMPOSITION_ROOT}) == []


def test_only_the_composition_root_imports_several_services() -> None:
    several = sorted(
        f"{path.relative_to(ROOT)} imports {', '.join(sorted(packages & set(SERVICES)))}"
        for path, packages in IMPORTS.items()
        if package_of(path) != COMPOSITION_ROOT and package_of(path) != "tests" and len(packages & set(SERVICES)) > 1
    )
    assert several == []


def test_the_check_sees_the_code() -> None:
    """Guards against a vacuous pass: the scan finds the kernel and reads real imports."""
    kernel_files = [path for path in IMPORTS if package_of(path) == KERNEL]
    assert len(kernel_files) >= 5
    assert any(KERNEL in packages for path, packages in IMPORTS.items() if package_of(path) == "auth_service")
    assert not any(".venv" in path.parts for path in IMPORTS)


def test_the_import_reader_catches_every_form(tmp_path: Path) -> None:
    module = tmp_path / "sample.py"
    module.write_text(
        "import os, auth_service.models\n"
        "from gateway.proxy import Forward\n"
        "from . import sibling\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from user_service import models\n"
        "def late():\n"
        "    import importlib\n"
        "    return importlib.import_module('analytics_service.app')\n"
    )
    assert imported_packages(module) == {
        "os",
        "auth_service",
        "gateway",
        "typing",
        "user_service",
        "importlib",
        "analytics_service",
    }
