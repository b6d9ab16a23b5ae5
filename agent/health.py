"""Is the agent alive, can it sell, and its figures: `/healthz`, `/readyz` and `/metrics` (docs/metrics.md).

- `/healthz`: the event loop answers. Nothing else is looked at, so a restart is never asked for because a
  printer is out of paper.
- `/readyz`: each part on its own — the database, each device, central — and whether the station can sell.
  A till cannot sell when its database cannot be read (every sale is journaled first). Scanners, the printer and
  central do not stop a till: the cashier types a code, the print queue keeps the receipt, cash and card are
  taken offline. A kiosk also cannot sell without a working scanner (nobody there types a code) or without
  central (it takes code payments only). 503 then; 200 otherwise, with what is down reported. No token: it is
  for systemd and monitoring on the box, and shows device ids and states, never a sale or a member.
- `/metrics`: Prometheus text, behind the station's bearer token when `api.token` is set.

Readiness is a list of named checks, each giving one or more parts; a check is added in one line (`CHECKS`).
"""

from __future__ import annotations

import asyncio
import inspect
import secrets
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from pydantic import BaseModel

from agent.db import reader
from agent.errors import Unauthorized, Unavailable
from agent.journal import last_id
from agent.metrics import PRINTER_UP
from drivers.base import DeviceState

if TYPE_CHECKING:
    from agent.runtime import AgentState  # the runtime imports this module

# A check that takes longer is reported failed: a stuck database must not hang systemd's or Prometheus's probe.
CHECK_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Part:
    """One part of the station as readiness sees it."""

    name: str  # "database", a device id, "central"
    type: str  # database, scanner, printer, scanners, central, ...
    ok: bool
    state: str  # the part's own word: ok, connected, paper_out, unreachable, timeout, ...
    needed_to_sell: bool  # when it is not ok, the station cannot sell
    detail: str | None = None


Probe = Callable[["AgentState"], "Part | Iterable[Part] | Awaitable[Part | Iterable[Part]]"]


@dataclass(frozen=True)
class Check:
    """A named readiness check. `probe(state)` gives its parts; a plain function runs in a worker thread, a
    coroutine function on the loop. One that fails or overruns `timeout_s` counts as a part needed to sell."""

    name: str
    probe: Probe
    timeout_s: float = CHECK_TIMEOUT_S


def database_part(state: AgentState) -> Part:
    """A read of the journal's newest row: the table every sale is written to."""
    try:
        with reader(state.engine) as connection:
            last_id(connection)
    except sa.exc.SQLAlchemyError as exc:
        return Part(
            "database",
            "database",
            False,
            "error",
            True,
            f"the journal cannot be read: {getattr(exc, 'orig', exc)}"[:300],
        )
    return Part("database", "database", True, "ok", needed_to_sell=True)


def device_parts(state: AgentState) -> list[Part]:
    """Each scanner and the printer, as their drivers and the print queue last saw them (nothing is sent to a
    device: a network printer often takes one connection at a time, and a receipt may be on its way)."""
    devices = state.devices
    assert devices is not None, "the agent is ready, so its devices are open"
    kiosk = state.settings.station.kind == "kiosk"
    parts = []
    for scanner in list(devices.scanners.values()):
        status = scanner.status
        parts.append(
            Part(
                scanner.device_id,
                "scanner",
                status.state is DeviceState.CONNECTED,
                status.state.value,
                False,
                status.reason,
            )
        )
    if kiosk:
        # The customer scans every code: one scanner (or the camera) that works is needed.
        working = [part.name for part in parts if part.ok]
        detail = (
            f"working: {', '.join(working)}" if working else "no scanner or camera is working: the customer cannot scan"
        )
        parts.append(Part("scanning", "scanners", bool(working), "ok" if working else "none", True, detail))
    if devices.printer is not None:
        try:
            queue = devices.printer.status  # its counts come from the database
        except sa.exc.SQLAlchemyError:
            parts.append(
                Part(devices.printer.printer_id, "printer", False, "unknown", False, "its queue cannot be read")
            )
            return parts
        # Out of paper or off, the receipt waits in the queue: reported, never a reason to stop selling.
        detail = f"{queue.queued} queued, {queue.uncertain} uncertain" + (f"; {queue.reason}" if queue.reason else "")
        parts.append(Part(queue.printer_id, "printer", queue.state in PRINTER_UP, queue.state.value, False, detail))
    return parts


async def central_part(state: AgentState) -> Part:
    """Central as the till sees it (agent/connectivity.py): recent sync results and requests, or one short probe."""
    kiosk = state.settings.station.kind == "kiosk"
    assert state.checkout is not None, "the agent is ready, so its checkout is open"
    connectivity = state.checkout.connectivity
    try:
        online = await asyncio.wait_for(connectivity.online(), connectivity.probe_timeout_s + 1.0)
    except TimeoutError:
        online = False
    detail = None if online else ("code payments wait for it" if kiosk else "selling offline: cash and card only")
    return Part("central", "central", online, "reachable" if online else "unreachable", kiosk, detail)


def disk_part(state: AgentState) -> Part:
    """Free space under the database: below `storage.min_free_mb` the till refuses new sales (agent/disk_space.py)."""
    assert state.disk is not None, "the agent is ready, so its disk is watched"
    space = state.disk.check()
    return Part("disk", "disk", space.ok, "ok" if space.ok else "low", True, space.message)


# The checks /readyz runs, in the order it reports them.
CHECKS: list[Check] = [
    Check("database", database_part),
    Check("disk", disk_part),
    Check("devices", device_parts),
    Check("central", central_part, timeout_s=30.0),  # bounded by the probe's own timeout, from settings
]


async def run_check(check: Check, state: AgentState) -> list[Part]:
    try:
        if inspect.iscoroutinefunction(check.probe):
            found = await asyncio.wait_for(check.probe(state), check.timeout_s)
        else:
            found = await asyncio.wait_for(asyncio.to_thread(check.probe, state), check.timeout_s)
    except TimeoutError:
        return [Part(check.name, check.name, False, "timeout", True, f"did not answer within {check.timeout_s:g} s")]
    except Exception as exc:  # the part is reported broken; the check itself must not break /readyz
        return [Part(check.name, check.name, False, "error", True, f"{type(exc).__name__}: {str(exc)[:200]}")]
    return [found] if isinstance(found, Part) else list(found)


async def readiness(state: AgentState, checks: Sequence[Check]) -> tuple[bool, list[Part]]:
    """(can sell, every part)."""
    results = await asyncio.gather(*(run_check(check, state) for check in checks))
    parts = [part for found in results for part in found]
    return all(part.ok or not part.needed_to_sell for part in parts), parts


health_router = APIRouter(tags=["health"])


class Alive(BaseModel):
    status: Literal["ok"] = "ok"


@health_router.get("/healthz")
async def healthz() -> Alive:
    """Liveness: answered on the event loop itself, without a token."""
    return Alive()


@health_router.get("/readyz", include_in_schema=False)
async def readyz(request: Request) -> JSONResponse:
    """Each part's state, and 503 when the station cannot sell."""
    state = getattr(request.app.state, "agent", None)
    if state is None:
        return JSONResponse({"status": "starting", "can_sell": False, "parts": []}, status_code=503)
    can_sell, parts = await readiness(state, CHECKS)
    body = {
        "status": "ready" if can_sell else "not_ready",
        "can_sell": can_sell,
        "station_kind": state.settings.station.kind,
        "parts": [asdict(part) for part in parts],
    }
    return JSONResponse(body, status_code=200 if can_sell else 503)


@health_router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus text format; the bearer token is required when `api.token` is set."""
    state = getattr(request.app.state, "agent", None)
    if state is None:
        raise Unavailable("the agent is starting")
    token = state.settings.api.token.get_secret_value()
    if token:
        sent = request.headers.get("authorization", "")
        given = sent[7:] if sent.lower().startswith("bearer ") else ""
        if not secrets.compare_digest(given.encode(), token.encode()):
            raise Unauthorized("send the station's API token: Authorization: Bearer <api.token>")
    # Collecting reads the database: in a worker thread, never on the loop.
    text = await asyncio.to_thread(generate_latest, state.metrics.registry)
    return Response(text, media_type=CONTENT_TYPE_PLAIN_0_0_4)
