"""The station's event stream hands every event to every follower, in order, however slowly it reads."""

from __future__ import annotations

import asyncio

import pytest

from agent.events import EventHub

# A lost event shows as a follower waiting forever: fail instead.
pytestmark = pytest.mark.timeout(10)


def test_events_published_while_a_follower_is_busy_are_not_lost():
    async def run() -> list[str]:
        hub = EventHub()
        follower = hub.follow(last_id=0)
        hub.publish("opened", "s1")
        got = [(await anext(follower)).type]
        # The follower is suspended handing out "opened" (a slow screen) while two more events come.
        hub.publish("scan", "s1")
        hub.publish("member", "s1")
        got += [(await anext(follower)).type, (await anext(follower)).type]
        await follower.aclose()
        return got

    assert asyncio.run(run()) == ["opened", "scan", "member"]


def test_a_session_follower_sees_its_own_session_only_and_replays_from_an_id():
    async def run() -> tuple[list[str], list[int]]:
        hub = EventHub()
        for session, kind in (("a", "opened"), ("b", "opened"), ("a", "member"), ("b", "paid")):
            hub.publish(kind, session)
        mine = hub.follow(last_id=0, session_id="a")
        own = [(await anext(mine)).type, (await anext(mine)).type]
        await mine.aclose()
        later = hub.follow(last_id=2)
        ids = [(await anext(later)).id, (await anext(later)).id]
        await later.aclose()
        return own, ids

    assert asyncio.run(run()) == (["opened", "member"], [3, 4])
