"""Calls for staff in the local API: a kiosk's customer asks (`POST /v1/help`), a till hears (`POST /v1/help-calls`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from agent.deps import TOKEN_REQUIRED, V1_ERRORS, StateDep
from agent.errors import Unavailable
from agent.help_calls import HelpCall, HelpCalls, HelpSent

router = APIRouter(prefix="/v1", tags=["help"], dependencies=TOKEN_REQUIRED, responses=V1_ERRORS)


def get_help_calls(state: StateDep) -> HelpCalls:
    if state.help_calls is None:
        raise Unavailable("help calls are not open yet: retry shortly")
    return state.help_calls


HelpCallsDep = Annotated[HelpCalls, Depends(get_help_calls)]


class HelpIn(BaseModel):
    session_id: str | None = Field(None, description="the sale open on the screen, if any")


@router.post("/help")
async def call_for_help(body: HelpIn, help_calls: HelpCallsDep) -> HelpSent:
    """The customer taps "需要帮助": event `help` here, and the till of `[help] till_url` is told."""
    return await help_calls.call(body.session_id)


@router.post("/help-calls", status_code=202)
async def help_call_heard(body: HelpCall, help_calls: HelpCallsDep) -> HelpCall:
    """A kiosk's call for staff, sent to this till: event `help` on GET /v1/events for the cashier's screen."""
    help_calls.heard(body)
    return body
