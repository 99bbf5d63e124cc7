"""requirements.lock pins every dependency pyproject.toml declares, at a version it allows, and this
environment is the locked one: a disagreement fails here, not in next month's numbers."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata

from conftest import ROOT
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

UNLOCKED = {"torch"}  # pinned by scripts/setup.sh: the CPU build here, a CUDA build on GPU machines


def locked() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line.strip()).groups()
            pins[canonicalize_name(name)] = version
    return pins


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [r for group in project.get("optional-dependencies", {}).values() for r in group]
    return [Requirement(r) for r in project["dependencies"] + extras]


def test_the_lock_pins_every_declared_dependency_at_an_allowed_version():
    pins = locked()
    for requirement in declared():
        name = canonicalize_name(requirement.name)
        if name in UNLOCKED:
            continue
        assert name in pins, f"{requirement.name} is in pyproject.toml but not in requirements.lock: run scripts/lock.sh"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {name}=={pins[name]}, which pyproject.toml's {requirement} refuses: run scripts/lock.sh"
        )


def test_this_environment_is_the_locked_one():
    pins = locked()
    assert not UNLOCKED & set(pins)
    wrong = {name: (version, metadata.version(name)) for name, version in pins.items() if metadata.version(name) != version}
    assert not wrong, f"installed versions differ from requirements.lock (locked, installed): {wrong}"
