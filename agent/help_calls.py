"""A kiosk customer calls for staff ("not scanning? 需要帮助"): the kiosk's own screens hear it, and so does the till
named in `[help] till_url`, whose cashier screen shows which kiosk needs someone.

The call is sent to the till's local API at once (`POST /v1/help-calls`), with the till's token. A till that does
not answer is said so to the kiosk, whose screen then asks the customer to wave to staff: a call never hangs the
kiosk, and nothing about money depends on it.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime

import httpx
from pydantic import BaseModel, Field

from agent.clock import SYSTEM_CLOCK, Clock
from agent.events import EventHub
from agent.settings import Settings

log = logging.getLogger(__name__)

SEND_TIMEOUT_S = 3.0


class HelpCall(BaseModel):
    id: str
    station_id: str = Field(description="the kiosk that called")
    station_name: str
    session_id: str | None = Field(description="the kiosk's sale at the time, if one was open")
    at: datetime


class HelpSent(BaseModel):
    call: HelpCall
    delivered: bool = Field(description="the till heard it; false: no till is set, or it did not answer")
    message: str
    message_zh: str


class HelpCalls:
    def __init__(self, settings: Settings, events: EventHub, clock: Clock = SYSTEM_CLOCK):
        self.settings = settings
        self.events = events
        self.clock = clock

    async def call(self, session_id: str | None) -> HelpSent:
        """This station's customer asks for staff."""
        station = self.settings.station
        help_call = HelpCall(
            id=str(uuid.uuid4()),
            station_id=station.id,
            station_name=station.name or station.id,
            session_id=session_id,
            at=self.clock.now(),
        )
        self.events.publish("help", session_id, "a customer asks for staff", call=help_call.model_dump(mode="json"))
        delivered = await self._send(help_call)
        if delivered:
            return HelpSent(
                call=help_call, delivered=True, message="staff have been called", message_zh="已呼叫店员，请稍候"
            )
        return HelpSent(
            call=help_call,
            delivered=False,
            message="the till could not be told: wave to a member of staff",
            message_zh="请向附近的店员示意",
        )

    def heard(self, help_call: HelpCall) -> None:
        """A kiosk's call, at this till: its cashier screen shows it."""
        log.info("help call from a kiosk", extra={"station": help_call.station_id})
        self.events.publish(
            "help",
            None,
            f"{help_call.station_name} needs staff",
            call=help_call.model_dump(mode="json"),
        )

    async def _send(self, help_call: HelpCall) -> bool:
        target = self.settings.help
        if target.till_url is None:
            return False
        token = target.till_token.get_secret_value()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            async with httpx.AsyncClient(timeout=SEND_TIMEOUT_S) as client:
                answer = await client.post(
                    f"{target.till_url}/v1/help-calls", json=help_call.model_dump(mode="json"), headers=headers
                )
        except httpx.HTTPError as exc:
            log.warning("help call not delivered", extra={"till": target.till_url, "error": str(exc)})
            return False
        if answer.status_code >= 300:
            log.warning("help call refused by the till", extra={"till": target.till_url, "status": answer.status_code})
            return False
        return True
