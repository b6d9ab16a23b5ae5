"""An offline wheel folder for systemd/install.sh, made from this checkout's virtual environment.

A till installs from a wheel folder when it has no index (`POS_EDGE_PIP_ARGS="--no-index --find-links DIR"`,
docs/OPERATIONS.md). Here the folder is made without the network: the agent's wheel is built from a copy of the
source (as tests/agent/test_installer.py does), and every distribution the agent needs at run time is packed back into a
wheel from its files in `.venv` (its RECORD lists them) with `wheel pack`, so the container installs exactly the
versions the tests ran with.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement

AGENT = "pos-edge-agent"
SOURCE_PARTS = ("agent", "drivers", "kiosk_ui", "central", "README.md", "pyproject.toml")
# Written by pip at install time; `wheel pack` writes RECORD again.
INSTALL_ONLY = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_closure(root: str = AGENT) -> list[importlib.metadata.Distribution]:
    """The installed distributions `root` needs at run time (no extras), `root` itself left out."""
    found: dict[str, importlib.metadata.Distribution] = {}
    todo = [root]
    while todo:
        name = todo.pop()
        if _key(name) in found:
            continue
        dist = importlib.metadata.distribution(name)
        found[_key(name)] = dist
        for line in dist.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    del found[_key(root)]
    return [found[k] for k in sorted(found)]


def repack(dist: importlib.metadata.Distribution, into: Path, staging: Path) -> Path:
    """A wheel of an installed distribution. Files outside site-packages (console scripts, C headers) are left
    out: pip writes the scripts again from entry_points.txt."""
    stage = staging / _key(dist.metadata["Name"])
    for file in dist.files or []:
        if file.parts[0] == ".." or "__pycache__" in file.parts:
            continue
        if file.parent.name.endswith(".dist-info") and file.name in INSTALL_ONLY:
            continue
        target = stage / file
        target.parent.mkdir(parents=True, exist_ok=True)
        source = Path(dist.locate_file(file))
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)
    before = set(into.glob("*.whl"))
    subprocess.run(
        [sys.executable, "-m", "wheel", "pack", "-d", str(into), str(stage)], check=True, capture_output=True
    )
    shutil.rmtree(stage)
    (made,) = set(into.glob("*.whl")) - before
    return made


def agent_wheel(repo: Path, into: Path, staging: Path) -> Path:
    """The agent's wheel from a copy of the source (a build in the checkout would leave build/ behind)."""
    source = staging / "pos-edge-agent-src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for part in SOURCE_PARTS:
        if (repo / part).is_dir():
            shutil.copytree(repo / part, source / part, ignore=ignore)
        else:
            shutil.copy2(repo / part, source / part)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-index", "--no-build-isolation", "-w", str(into), str(source)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    shutil.rmtree(source)
    return next(into.glob("pos_edge_agent-*.whl"))


def build(repo: Path, into: Path) -> tuple[Path, int]:
    """The agent's wheel and the wheels of everything it needs, in `into`; (the agent's wheel, how many others)."""
    into.mkdir(parents=True, exist_ok=True)
    staging = into.parent / (into.name + ".staging")
    staging.mkdir()
    try:
        dependencies = runtime_closure()
        for dist in dependencies:
            repack(dist, into, staging)
        return agent_wheel(repo, into, staging), len(dependencies)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
