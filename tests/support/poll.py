"""Waiting for state that no event announces (a counter on a status route, a row another thread writes): ask
again until it holds, or fail saying what never happened. Where there is an event to wait on, wait on it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(condition: Callable[[], T], within: float = 10.0, what: str = "the condition", every: float = 0.02) -> T:
    """`condition()`'s first truthy value, asked every `every` seconds for at most `within` seconds."""
    deadline = time.monotonic() + within
    while not (found := condition()):
        assert time.monotonic() < deadline, f"{what} never held within {within:g} s"
        time.sleep(every)
    return found
