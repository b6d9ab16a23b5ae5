from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from agent.db import open_database
from agent.member_cache import MemberCache
from tests.support.credentials import PHONE_KEY_BYTES

# A network receipt printer on 127.0.0.1 (the `printer_server` fixture).
pytest_plugins = ["tests.printer_server", "tests.central.plugin", "tests.checkout_stack"]

IN_CI = os.environ.get("CI") == "true"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Browser tests last, whatever the order asked: Playwright's sync API keeps an event loop running in the main
    thread, and the tests that call `asyncio.run` after it would find it there."""
    items.sort(key=lambda item: "tests/ui/" in item.nodeid.replace("\\", "/"))


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "agent.db"


@pytest.fixture
def engine(db_path: Path):
    engine = open_database(db_path)
    yield engine
    engine.dispose()


@pytest.fixture
def cache(engine) -> MemberCache:
    return MemberCache(engine, PHONE_KEY_BYTES)


@pytest.fixture
def read_only_dir(tmp_path: Path):
    """A directory on a read-only file system, holding `agent.db` created while it was writable."""
    where = tmp_path / "ro"
    where.mkdir()
    if os.geteuid() != 0:
        open_database(where / "agent.db").dispose()
        where.chmod(0o500)
        (where / "agent.db").chmod(0o400)
        yield where
        where.chmod(0o700)
        return
    # Root ignores file modes: a read-only mount is the only honest read-only disk.
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)], capture_output=True)
    if mounted.returncode != 0:
        message = f"cannot mount a tmpfs for the read-only disk test: {mounted.stderr.decode().strip()}"
        pytest.fail(message) if IN_CI else pytest.skip(message)
    try:
        open_database(where / "agent.db").dispose()
        subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)
