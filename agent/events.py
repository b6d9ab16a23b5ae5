"""What happened at this station's sessions, for screens to follow as server-sent events.

Events are numbered; the latest `keep` are remembered so a screen that reconnects with `Last-Event-ID` gets what
it missed. Lives on the agent's event loop.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Event:
    id: int
    type: str
    session_id: str | None
    message: str | None
    data: dict[str, Any]

    def payload(self) -> dict[str, Any]:
        return {"type": self.type, "session_id": self.session_id, "message": self.message, **self.data}


class EventHub:
    def __init__(self, keep: int = 500):
        self._events: deque[Event] = deque(maxlen=keep)
        self._next_id = 1
        self._published = asyncio.Event()  # set, then replaced, at each publish: wakes every follower once

    def publish(self, type: str, session_id: str | None, message: str | None = None, **data: Any) -> Event:
        event = Event(self._next_id, type, session_id, message, data)
        self._next_id += 1
        self._events.append(event)
        self._published.set()
        self._published = asyncio.Event()
        return event

    def since(self, last_id: int, session_id: str | None = None) -> list[Event]:
        return [e for e in self._events if e.id > last_id and (session_id is None or e.session_id == session_id)]

    @property
    def last_id(self) -> int:
        return self._next_id - 1

    async def follow(self, last_id: int | None = None, session_id: str | None = None) -> AsyncIterator[Event]:
        """Events after `last_id` (None: only new ones), then each new one as it comes, until cancelled."""
        seen = self.last_id if last_id is None else last_id
        while True:
            if self.last_id <= seen:
                await self._published.wait()
                continue
            # Up to the events there were when this batch was taken: those published while it is being sent
            # come in the next batch.
            upto = self.last_id
            for event in self.since(seen, session_id):
                yield event
            seen = upto
