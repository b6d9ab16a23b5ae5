"""The agent's local HTTP API for the store's POS software and the kiosk UI."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Mapping
from dataclasses import asdict
from datetime import datetime
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from agent import __version__
from agent.central_client import CentralError
from agent.checkout_api import checkout_router, sessions_router
from agent.clock import utcnow
from agent.db import reader, schema_revision
from agent.errors import (
    AgentError,
    ErrorBody,
    Internal,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    NotSimulated,
    PrintJobConflict,
    SyncFailed,
    Unauthorized,
)
from agent.health import health_router
from agent.ids import new_transaction_id
from agent.metrics import read_database_figures
from agent.print_queue import JobNotFound, JobStateError, JobView
from agent.receipts import test_page
from agent.sync import reached_central
from drivers.simulated import SimulatedPrinter, SimulatedScanner

STATIC = Path(__file__).resolve().parent.parent / "kiosk_ui" / "static"


class DatabaseStatus(BaseModel):
    path: str
    schema_revision: str | None
    members: int
    journal_rows: int
    outbox_pending: int
    outbox_rejected: int


class CheckoutStatus(BaseModel):
    online: bool = Field(description="central reachable, by recent sync results or a quick probe")
    open_session: str | None
    sync_lag_s: int | None = Field(description="seconds since the oldest journal row still waiting for central")
    outbox_pending: int
    printer_state: str | None
    printer_queued: int
    printer_uncertain: int


class AgentStatus(BaseModel):
    version: str
    store_id: str
    store_name: str
    station_id: str
    station_kind: str
    database: DatabaseStatus
    checkout: CheckoutStatus | None = None


class ScannerPublic(BaseModel):
    id: str
    state: str
    reason: str | None
    since: datetime
    simulated: bool


class PrinterPublic(BaseModel):
    id: str
    url: str
    state: str
    reason: str | None
    queued: int
    uncertain: int
    simulated: bool


class DevicesPublic(BaseModel):
    scanners: list[ScannerPublic]
    printer: PrinterPublic | None


class JobHealthPublic(BaseModel):
    last_success: datetime | None
    last_error: str | None
    failures: int


class SyncPublic(BaseModel):
    push: JobHealthPublic
    pull: JobHealthPublic
    outbox_pending: int
    outbox_rejected: int
    oldest_pending_at: datetime | None
    member_cursor: str | None


class ScanIn(BaseModel):
    text: str = Field(min_length=1, max_length=4096)


class JobPublic(BaseModel):
    id: str
    purpose: str
    status: str
    attempts: int
    last_error: str | None
    created_at: datetime
    printed_at: datetime | None
    preview_url: str | None = None


def get_state(request: Request) -> Any:
    return request.app.state.agent


StateDep = Annotated[Any, Depends(get_state)]


def _printer(state: Any):
    if state.devices.printer is None:
        raise NotFound("no printer is configured: set [devices.printer] in the settings")
    return state.devices.printer


def _job_public(state: Any, job: JobView) -> JobPublic:
    preview = None
    if isinstance(state.devices.printer_connection, SimulatedPrinter) and job.status == "printed":
        preview = f"/v1/printer/jobs/{job.id}/preview.png"
    return JobPublic(
        **{name: getattr(job, name) for name in JobPublic.model_fields if name != "preview_url"}, preview_url=preview
    )


status_router = APIRouter(tags=["status"])
devices_router = APIRouter(prefix="/v1", tags=["devices"])
printer_router = APIRouter(prefix="/v1/printer", tags=["printer"])


@status_router.get("/v1/status")
async def status(state: StateDep) -> AgentStatus:
    """Devices, online or offline, how far behind the push to central is, outbox depth and the print queue."""
    settings = state.settings
    figures = await asyncio.to_thread(read_database_figures, state.engine)  # the same figures /metrics shows
    database = DatabaseStatus(
        path=str(settings.storage.database),
        schema_revision=await asyncio.to_thread(schema_revision, state.engine),
        members=figures.members,
        journal_rows=figures.journal_rows,
        outbox_pending=figures.outbox_pending,
        outbox_rejected=figures.outbox_rejected,
    )
    checkout = None
    if state.checkout is not None:
        printer = state.devices.printer.status if state.devices and state.devices.printer else None
        lag = figures.sync_lag(utcnow())
        lag_s = None if lag is None else int(lag.total_seconds())
        checkout = CheckoutStatus(
            online=await state.checkout.connectivity.online(),
            open_session=state.checkout.current.id if state.checkout.current else None,
            sync_lag_s=lag_s,
            outbox_pending=database.outbox_pending,
            printer_state=printer.state.value if printer else None,
            printer_queued=printer.queued if printer else 0,
            printer_uncertain=printer.uncertain if printer else 0,
        )
    return AgentStatus(
        version=__version__,
        store_id=settings.store.id,
        store_name=settings.store.name,
        station_id=settings.station.id,
        station_kind=settings.station.kind,
        database=database,
        checkout=checkout,
    )


@status_router.get("/v1/sync")
def sync_status(state: StateDep) -> SyncPublic:
    """Push and pull health, outbox depth (pending, and rejected rows that need a person) and the feed cursor."""
    status = state.sync.status()

    def health(job) -> JobHealthPublic:
        return JobHealthPublic(last_success=job.last_success, last_error=job.last_error, failures=job.failures)

    return SyncPublic(
        push=health(status.push),
        pull=health(status.pull),
        outbox_pending=status.outbox_pending,
        outbox_rejected=status.outbox_rejected,
        oldest_pending_at=status.oldest_pending_at,
        member_cursor=status.member_cursor,
    )


@status_router.post("/v1/sync")
async def sync_now(state: StateDep) -> dict[str, Any]:
    """Push the outbox and pull member changes now (the till's "sync now" button); 503 if central is down."""
    sync = state.sync
    reports = {}
    for name, health, run in (("pushed", sync.push_health, sync.push), ("pulled", sync.pull_health, sync.pull)):
        try:
            report = await run()
        except CentralError as exc:
            health.failed(exc)  # the till's view of central follows what it just saw
            raise SyncFailed(f"central cannot be reached or refused: {exc}") from exc
        if reached_central(report):
            health.succeeded()
        reports[name] = asdict(report)
    return reports


@devices_router.get("/devices")
def devices(state: StateDep) -> DevicesPublic:
    scanners = [
        ScannerPublic(
            id=reader.device_id,
            state=reader.status.state.value,
            reason=reader.status.reason,
            since=reader.status.since,
            simulated=isinstance(reader, SimulatedScanner),
        )
        for reader in state.devices.scanners.values()
    ]
    printer = None
    if state.devices.printer is not None:
        queue = state.devices.printer.status
        printer = PrinterPublic(
            id=queue.printer_id,
            url=state.settings.devices.printer.url,
            state=queue.state.value,
            reason=queue.reason,
            queued=queue.queued,
            uncertain=queue.uncertain,
            simulated=isinstance(state.devices.printer_connection, SimulatedPrinter),
        )
    return DevicesPublic(scanners=scanners, printer=printer)


@devices_router.post("/devices/{device_id}/scan", status_code=202)
def simulate_scan(device_id: str, scan: ScanIn, state: StateDep) -> dict[str, str]:
    """Hand a code to a simulated scanner (`sim://`), as if it had been scanned."""
    reader = state.devices.scanners.get(device_id)
    if reader is None:
        raise NotFound(f"no scanner {device_id} at this station")
    if not isinstance(reader, SimulatedScanner):
        raise NotSimulated(f"scanner {device_id} is a real device; only sim:// scanners take scans over the API")
    reader.inject(scan.text)
    return {"status": "accepted"}


@devices_router.get("/scans")
def recent_scans(state: StateDep) -> list[dict[str, Any]]:
    """The station's latest scans, newest first, secret codes masked."""
    return [scan.public() for scan in reversed(state.scans.recent)]


@printer_router.get("")
def printer_status(state: StateDep) -> PrinterPublic:
    _printer(state)  # 404 when there is none
    printer = devices(state).printer
    assert printer is not None, "a configured printer is listed with the devices"
    return printer


@printer_router.get("/jobs")
def jobs(state: StateDep, status: str | None = None) -> list[JobPublic]:
    return [_job_public(state, job) for job in _printer(state).jobs(status)]


@printer_router.post("/test-page")
def print_test_page(state: StateDep) -> JobPublic:
    document = test_page(state.settings.store.name, state.devices.columns)
    job = _printer(state).enqueue(f"test-{new_transaction_id()}", state.devices.render(document), purpose="test")
    return _job_public(state, job)


@printer_router.post("/jobs/{job_id}/{action}")
def job_action(job_id: str, action: str, state: StateDep) -> JobPublic:
    """cancel (queued or uncertain), release (uncertain: it did not print, send again), mark-printed (uncertain)."""
    queue = _printer(state)
    actions = {"cancel": queue.cancel, "release": queue.release, "mark-printed": queue.mark_printed}
    if action not in actions:
        raise NotFound(f"unknown action {action!r}; one of {', '.join(actions)}")
    try:
        return _job_public(state, actions[action](job_id))
    except JobNotFound as exc:
        raise NotFound(str(exc)) from exc
    except JobStateError as exc:
        raise PrintJobConflict(str(exc)) from exc


@printer_router.get("/jobs/{job_id}/preview.png", response_class=FileResponse)
def job_preview(job_id: str, state: StateDep) -> FileResponse:
    connection = state.devices.printer_connection
    if not isinstance(connection, SimulatedPrinter):
        raise NotFound("previews exist for simulated printers only")
    with reader(state.engine) as db:
        data = db.exec_driver_sql("SELECT data FROM print_job WHERE id = ?", (job_id,)).scalar()
    path = connection.preview_of(data) if data is not None else None
    if path is None:
        raise NotFound(f"no preview for print job {job_id} (not printed yet?)")
    return FileResponse(path, media_type="image/png")


# The 4xx the framework raises by itself (an unknown path, a method a path does not take), as the tree's classes.
FRAMEWORK_ERRORS: dict[int, type[AgentError]] = {
    401: Unauthorized,
    404: NotFound,
    405: MethodNotAllowed,
    422: InvalidRequest,
}


def _answer(error: AgentError) -> JSONResponse:
    """Every 4xx/5xx of the API, in one shape: `ErrorBody` (docs/checkout.md, Errors)."""
    return _json(error.status, error.body(), error.headers)


def _json(status: int, body: ErrorBody, headers: Mapping[str, str] | None = None) -> JSONResponse:
    content = body.model_dump(mode="json", exclude_none=True)
    content.setdefault("message_zh", None)  # always there, so a screen reads one key
    return JSONResponse(content, status_code=status, headers=headers)


def create_app(lifespan, api_token: str = "") -> FastAPI:
    app = FastAPI(
        title="POS Edge Agent",
        version=__version__,
        lifespan=lifespan,
        description="The till's local API: sessions, pay-as-member, tenders, refunds, devices (docs/checkout.md).",
    )

    @app.middleware("http")
    async def require_token(request: Request, call_next):
        """Every /v1 request needs the station's bearer token; GETs may carry it as ?token= (event streams and
        images in a browser cannot set headers)."""
        if api_token and request.url.path.startswith("/v1/"):
            sent = request.headers.get("authorization", "")
            given = sent[7:] if sent.lower().startswith("bearer ") else ""
            if not given and request.method == "GET":
                given = request.query_params.get("token", "")
            if not secrets.compare_digest(given.encode(), api_token.encode()):
                return _answer(Unauthorized("send the station's API token: Authorization: Bearer <api.token>"))
        return await call_next(request)

    @app.exception_handler(AgentError)
    async def agent_error(request: Request, exc: AgentError) -> JSONResponse:
        return _answer(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error = FRAMEWORK_ERRORS.get(exc.status_code)
        if error is not None:
            return _answer(error(str(exc.detail)))
        # Any other status the framework may raise: the same shape, its code named after the status.
        known = exc.status_code in HTTPStatus._value2member_map_
        code = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_") if known else "error"
        return _json(exc.status_code, ErrorBody(error=code, message=str(exc.detail), message_zh=None), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Where and why only, never the input: a body may hold NaN or 1e999 (valid JSON to Python's parser),
        # which no JSON answer can carry, or a payment code that must not be echoed.
        details = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        first = details[0] if details else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(part) for part in first["loc"] if part != "body")
        message = str(first["msg"])
        return _answer(InvalidRequest(f"{where}: {message}" if where else message, details=details))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # A bug: answered in the API's own error shape (the server logs its traceback, masked like every line).
        return _answer(
            Internal(
                "the agent failed on this request (see its log); what was saved before the failure is kept",
                "系统错误，请重试或联系管理员",
            )
        )

    app.include_router(health_router)
    app.include_router(status_router)
    app.include_router(devices_router)
    app.include_router(printer_router)
    app.include_router(sessions_router)
    app.include_router(checkout_router)
    app.mount("/console", StaticFiles(directory=STATIC / "console", html=True), name="console")
    app.mount("/kiosk", StaticFiles(directory=STATIC / "kiosk", html=True), name="kiosk")
    app.mount("/till", StaticFiles(directory=STATIC / "till", html=True), name="till")
    app.mount("/shared", StaticFiles(directory=STATIC / "shared"), name="shared")  # what both screens use

    @app.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse("/console/")

    return app
