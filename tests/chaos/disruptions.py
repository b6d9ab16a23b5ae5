"""What happens to the store while the driver sells: the agent killed with SIGKILL at random moments (and at
moments when money moves) and restarted on the same database; central stopped (SIGTERM, sometimes SIGKILL) and
started again a few seconds later. Each runs on a thread of its own, from a seeded random stream."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass

from tests.chaos.stack import Stack


@dataclass(frozen=True)
class Pace:
    agent_kill_every_s: float = 45.0  # mean time between background kills of the agent
    money_kill_chance: float = 0.06  # chance that a money step (tender, refund) is followed by a kill
    money_kill_within_s: tuple[float, float] = (0.15, 1.0)  # ... within the first (half the time) or the second
    kill_gap_s: float = 5.0  # at least this long between two kills of the agent (the till must get some work done)
    central_stop_every_s: float = 30.0  # mean time between central stops
    central_down_s: tuple[float, float] = (2.0, 6.0)
    central_kill_share: float = 0.25  # of central stops that are SIGKILL rather than SIGTERM


class Disruptions:
    def __init__(self, stack: Stack, seed: int, pace: Pace = Pace(), say=print):
        self.stack = stack
        self.pace = pace
        self.say = say
        self._rng = random.Random(f"chaos disruptions {seed}")
        self._rng_lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.errors: list[str] = []  # a process that would not start again
        self._last_kill = float("-inf")

    def start(self) -> None:
        for name, loop in (
            ("agent-killer", self._kill_agent_now_and_then),
            ("central-bouncer", self._bounce_central_now_and_then),
        ):
            thread = threading.Thread(target=self._guarded(loop), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def money_step(self) -> None:
        """The driver is about to move money: perhaps kill the agent while it does."""
        with self._rng_lock:
            if self._stopping.is_set() or self._rng.random() >= self.pace.money_kill_chance:
                return
            # Half the kills land while the step's request is being handled (journal, receipt, payment).
            delay = self._rng.uniform(0.0, self._rng.choice(self.pace.money_kill_within_s))
        timer = threading.Timer(delay, self._guarded(self._kill_and_restart_agent))
        timer.daemon = True
        timer.start()
        self._threads.append(timer)

    def stop(self) -> None:
        """No more disruptions; central and the agent running again."""
        self._stopping.set()
        for thread in list(self._threads):
            thread.join(90)
        self.stack.start_central()
        self.stack.start_agent()

    def _uniform(self, low: float, high: float) -> float:
        with self._rng_lock:
            return self._rng.uniform(low, high)

    def _wait(self, mean_s: float) -> bool:
        """Sleep an exponentially distributed while; False when the run is stopping."""
        with self._rng_lock:
            pause = self._rng.expovariate(1.0 / mean_s)
        return not self._stopping.wait(pause)

    def _kill_agent_now_and_then(self) -> None:
        while self._wait(self.pace.agent_kill_every_s):
            self._kill_and_restart_agent()

    def _kill_and_restart_agent(self) -> None:
        with self._rng_lock:
            if self._stopping.is_set() or time.monotonic() - self._last_kill < self.pace.kill_gap_s:
                return
            self._last_kill = time.monotonic()
        if not self.stack.kill_agent():
            return
        self._stopping.wait(self._uniform(0.2, 1.0))
        self.stack.start_agent()

    def _bounce_central_now_and_then(self) -> None:
        while self._wait(self.pace.central_stop_every_s):
            with self._rng_lock:
                kill = self._rng.random() < self.pace.central_kill_share
            self.stack.stop_central(kill=kill)
            self._stopping.wait(self._uniform(*self.pace.central_down_s))
            self.stack.start_central()

    def _guarded(self, work):
        def run() -> None:
            try:
                work()
            except Exception as exc:  # recorded and reported: the run must not hang on a dead thread
                self.errors.append(f"{type(exc).__name__}: {exc}")
                self.say(f"disruption failed: {exc}")

        return run
