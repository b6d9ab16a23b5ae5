"""How long to wait before trying again: the one back-off policy of the agent and its drivers.

A reopened scanner, a printer that failed a job, a sync with central that failed, a refund whose answer did not
come: each waits `first` seconds after its first failure in a row, twice as long after each further one, never
longer than `cap`. `jitter` is the share of that wait drawn at random, so that many tills (or many readers on one
till) that failed together do not all try again in step: 0 keeps the wait exact, 0.5 draws it between half and
all of it, 1 anywhere up to all of it ("full jitter", for a whole chain of stores knocking at central).

The policy is a value; who retries counts its own failures in a row, so one policy may be shared freely.
It lives in `drivers` because drivers must not import the agent, and the agent may import drivers.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    first: float = 0.5
    cap: float = 10.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not (0 <= self.first <= self.cap):
            raise ValueError(f"a back-off needs 0 <= first <= cap, not first={self.first}, cap={self.cap}")
        if not (0 <= self.jitter <= 1):
            raise ValueError(f"a back-off's jitter is a share between 0 and 1, not {self.jitter}")

    def delay(self, failures: int, draw: Callable[[], float] = random.random) -> float:
        """Seconds to wait after `failures` failures in a row (1: the first); 0 when nothing failed.

        `draw` gives a number in [0, 1): tests pass their own to see the bounds."""
        if failures < 1:
            return 0.0
        step = min(self.cap, self.first * 2 ** min(failures - 1, 64))  # the exponent bounded: no float overflow
        return step * (1 - self.jitter * draw())
