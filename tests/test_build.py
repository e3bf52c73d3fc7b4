"""Builds are reproducible: every install comes from the hashed lock files, and every image is pinned.

`make install`, `.ci/run` (through make) and the Dockerfile install exactly what requirements.lock
and requirements-runtime.lock name, each file checked against its hash; `make lock` writes both from
pyproject.toml. These tests fail when pyproject.toml names a dependency the locks do not cover (a
forgotten `make lock`), when the two locks disagree, and when an image floats.
"""

import importlib.metadata
import re
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
RUNTIME_LOCK = ROOT / "requirements-runtime.lock"
PYPROJECT: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())
# The dependencies whose private parts the code uses (gateway/transport/serving.py subclasses uvicorn's
# httptools protocol): each must have an upper bound, so that an untested release is not installed.
USES_PRIVATE_PARTS = ["uvicorn"]
LOCK_ENTRY = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+)(?:\s*;\s*(?P<marker>[^\\]+?))?\s*\\$")
HASH = re.compile(r"^\s+--hash=sha256:[0-9a-f]{64}(?:\s*\\)?$")
# A tag with its full version (16.15, 7.4.11, 3.11.16-slim-bookworm): neither "latest" nor a major alone.
EXACT_TAG = re.compile(r"^\d+\.\d+(\.\d+)?(-[a-z0-9.-]+)?$")


@dataclass(frozen=True)
class Pin:
    version: str
    marker: str | None
    hashes: frozenset[str]


def read_lock(path: Path) -> dict[str, Pin]:
    """The lock's entries by canonical name; fails on a line that is neither an entry, a hash nor a comment."""
    pins: dict[str, Pin] = {}
    lines = path.read_text().splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        entry = LOCK_ENTRY.match(line)
        assert entry, f"{path.name}: not a pinned entry: {line!r}"
        hashes = []
        while index < len(lines) and HASH.match(lines[index]):
            hashes.append(lines[index].split("sha256:")[1].rstrip(" \\"))
            index += 1
        name = canonicalize_name(entry["name"])
        pins[name] = Pin(entry["version"], entry["marker"], frozenset(hashes))
    return pins


def runtime_requirements() -> list[Requirement]:
    return [Requirement(text) for text in PYPROJECT["project"]["dependencies"]]


def dev_requirements() -> list[Requirement]:
    return [Requirement(text) for text in PYPROJECT["project"]["optional-dependencies"]["dev"]]


def build_requirements() -> list[Requirement]:
    return [Requirement(text) for text in PYPROJECT["build-system"]["requires"]]


def with_extras(requirements: list[Requirement]) -> list[Requirement]:
    """The requirements and what their extras add (``psycopg[binary,pool]`` needs psycopg-binary),
    read from the installed distributions' metadata."""
    found = list(requirements)
    for requirement in requirements:
        for extra in requirement.extras:
            for text in importlib.metadata.requires(requirement.name) or []:
                added = Requirement(text)
                if added.marker and added.marker.evaluate({"extra": extra}):
                    added.marker = None
                    found.append(added)
    return found


def assert_covered(requirements: list[Requirement], pins: dict[str, Pin], lock: Path) -> None:
    for requirement in with_extras(requirements):
        pin = pins.get(canonicalize_name(requirement.name))
        assert pin is not None, f"{lock.name} has no {requirement.name}: run `make lock`"
        assert requirement.specifier.contains(pin.version, prereleases=True), (
            f"{lock.name} pins {requirement.name}=={pin.version}, outside pyproject.toml's {requirement.specifier}:"
            " run `make lock`"
        )


# --- the lock files ---------------------------------------------------------------------------------


def test_the_lock_covers_every_dependency_pyproject_names() -> None:
    assert_covered(runtime_requirements() + dev_requirements() + build_requirements(), read_lock(LOCK), LOCK)


def test_the_runtime_lock_covers_the_runtime_and_the_build_backend_but_no_dev_tool() -> None:
    pins = read_lock(RUNTIME_LOCK)
    assert_covered(runtime_requirements() + build_requirements(), pins, RUNTIME_LOCK)
    for tool in ("pytest", "mypy", "ruff", "schemathesis", "uv"):
        assert tool not in pins, f"{RUNTIME_LOCK.name} installs the dev tool {tool} into the image"


def test_every_locked_package_is_pinned_with_its_hashes() -> None:
    for lock in (LOCK, RUNTIME_LOCK):
        assert "#    make lock" in lock.read_text(), f"{lock.name} was not written by `make lock`"
        for name, pin in read_lock(lock).items():
            assert pin.hashes, f"{lock.name}: {name} has no hash, pip --require-hashes refuses the file"


def test_the_image_gets_the_very_versions_and_files_the_tests_ran_with() -> None:
    full = read_lock(LOCK)
    for name, pin in read_lock(RUNTIME_LOCK).items():
        assert name in full, f"{name} is in the image's lock only"
        assert full[name] == pin, f"{name}: {RUNTIME_LOCK.name} and {LOCK.name} differ"


def test_the_installed_packages_are_the_locked_ones() -> None:
    """What `make install` put into .venv is what the lock says (a stale .venv fails here)."""
    for name, pin in read_lock(LOCK).items():
        if pin.marker and not Requirement(f"{name}; {pin.marker}").marker.evaluate():  # type: ignore[union-attr]
            continue
        assert importlib.metadata.version(name) == pin.version, f"{name}: run `make install`"


def test_dependencies_whose_private_parts_the_code_uses_have_an_upper_bound() -> None:
    declared = {canonicalize_name(requirement.name): requirement for requirement in runtime_requirements()}
    locked = read_lock(LOCK)
    for name in USES_PRIVATE_PARTS:
        specifier = declared[name].specifier
        assert any(spec.operator in ("<", "<=", "==", "~=") for spec in specifier), f"{name}: no upper bound"
        assert specifier.contains(locked[name].version), f"{name}: the locked version is outside the bound"


# --- what installs from them ------------------------------------------------------------------------


def make_dry_run(*arguments: str) -> str:
    """The commands make would run (-n: none is run)."""
    done = subprocess.run(["make", "-n", *arguments], cwd=ROOT, capture_output=True, text=True, check=True)
    return done.stdout


def test_make_install_installs_from_the_lock_with_hashes_and_again_when_the_lock_changes() -> None:
    commands = make_dry_run("-W", "requirements.lock", "install")  # as if the lock had just changed
    assert "pip install --quiet --require-hashes -r requirements.lock" in commands
    assert "pip install --quiet --no-deps --no-build-isolation -e ." in commands


def test_make_lock_writes_both_locks_from_pyproject() -> None:
    commands = make_dry_run("-o", ".venv/.installed", "lock")
    assert "uv pip compile pyproject.toml - --quiet --generate-hashes" in commands
    assert "-o requirements-runtime.lock" in commands
    assert "--extra dev --constraint requirements-runtime.lock -o requirements.lock" in commands


def test_the_dockerfile_installs_the_runtime_lock_with_hashes_on_a_pinned_base() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    [base] = re.findall(r"^FROM (\S+)", dockerfile, flags=re.MULTILINE)
    image, _, digest = base.partition("@")
    name, _, tag = image.partition(":")
    assert name == "python" and EXACT_TAG.match(tag), f"{base}: not an exact version"
    assert tag.startswith("3.11."), "the image runs the Python the lock is resolved for (3.11)"
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), f"{base}: not pinned by digest"
    assert "COPY requirements-runtime.lock ./" in dockerfile
    assert "pip install --require-hashes -r requirements-runtime.lock" in dockerfile
    assert "pip install --no-deps --no-build-isolation ." in dockerfile
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert not any(pattern and re.fullmatch(pattern.replace("*", ".*"), RUNTIME_LOCK.name) for pattern in ignored)


# --- images -----------------------------------------------------------------------------------------


def images_in(path: Path) -> list[str]:
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "image" and isinstance(value, str):
                    found.append(value)
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    for document in yaml.safe_load_all(path.read_text()):
        walk(document)
    return found


@pytest.mark.parametrize(
    "path",
    [ROOT / "docker-compose.phase1.yml", *sorted((ROOT / "deploy" / "k8s-dev").glob("*.yaml"))],
    ids=lambda path: str(path.relative_to(ROOT)),
)
def test_third_party_images_are_pinned_to_exact_versions(path: Path) -> None:
    for image in images_in(path):
        if image.startswith("pyairtable-platform:"):
            continue  # ours, built from the Dockerfile
        tag = image.partition("@")[0].partition(":")[2]
        assert EXACT_TAG.match(tag), f"{path.name}: {image} floats"


def test_compose_and_the_dev_cluster_run_the_same_postgres_and_redis() -> None:
    compose = {image.partition(":")[0]: image for image in images_in(ROOT / "docker-compose.phase1.yml")}
    for manifest in sorted((ROOT / "deploy" / "k8s-dev").glob("*.yaml")):
        for image in images_in(manifest):
            assert image == compose[image.partition(":")[0]], f"{manifest.name}: {image}"
