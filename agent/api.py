"""The agent's local HTTP API for the store's POS software and the kiosk UI."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import asdict
from datetime import datetime
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from agent import __version__
from agent.central_client import CentralError
from agent.checkout_api import checkout_router, sessions_router
from agent.clock import utcnow
from agent.codes import Kind
from agent.db import schema_revision
from agent.deps import (
    TOKEN_REQUIRED,
    V1_ERRORS,
    DevicesDep,
    PrinterDep,
    ScansDep,
    StateDep,
    SyncDep,
    accepts_token_in_query,
    bearer,
    check_token,
)
from agent.devices import StationDevices
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
    error_responses,
)
from agent.health import health_router
from agent.help_api import router as help_router
from agent.idempotency import answer_once
from agent.ids import new_transaction_id
from agent.membership_api import router as membership_router
from agent.print_queue import JobNotFound, JobStateError, JobView
from agent.receipts import test_page
from agent.station_figures import aread_station_figures
from agent.sync import PullReport, PushReport
from drivers.capabilities import HasPreviews, TakesScans
from drivers.escpos_printer import PrinterConnection

if TYPE_CHECKING:
    from agent.runtime import AgentState  # the runtime imports this module

STATIC = Path(__file__).resolve().parent.parent / "kiosk_ui" / "static"
DESCRIPTION = (
    "The till's local API: sessions, pay-as-member, tenders, refunds, devices (docs/checkout.md). Every /v1 request "
    "carries the station's token, `Authorization: Bearer <api.token>` (a GET may carry it as `?token=`). Every "
    "4xx/5xx answers `ErrorBody`; its `error` is a stable code (docs/checkout.md, Errors)."
)


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


class Status(BaseModel):
    """The station at a glance (`GET /v1/status`)."""

    version: str
    store_id: str
    store_name: str
    store_timezone: str = Field(description="IANA zone of the store: screens show every time in it (store time)")
    station_id: str
    station_kind: str
    database: DatabaseStatus
    checkout: CheckoutStatus | None = None


class ScannerPublic(BaseModel):
    id: str
    state: str
    reason: str | None
    since: datetime
    simulated: bool = Field(description="a `sim://` scanner: it takes scans over the API")


class PrinterPublic(BaseModel):
    id: str
    url: str
    state: str
    reason: str | None
    queued: int
    uncertain: int
    simulated: bool = Field(description="a `sim://` printer: its printed jobs have previews")


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
    preview_url: str | None = Field(None, description="a picture of the paper, for a simulated printer's printed jobs")


class ScanPublic(BaseModel):
    """A scan as a screen may show it: secret codes (payment codes, member codes) masked."""

    device_id: str
    at: str = Field(json_schema_extra={"format": "date-time"})
    kind: Kind
    provider: str | None
    value: str = Field(examples=["1345**********1234"])
    symbology: str | None


class Accepted(BaseModel):
    status: Literal["accepted"] = "accepted"


class SyncRun(BaseModel):
    """What "sync now" did: rows pushed and central's answers, member changes pulled."""

    pushed: PushReport
    pulled: PullReport


def _job_public(connection: PrinterConnection | None, job: JobView) -> JobPublic:
    preview = None
    if isinstance(connection, HasPreviews) and job.status == "printed":
        preview = f"/v1/printer/jobs/{job.id}/preview.png"
    return JobPublic(
        **{name: getattr(job, name) for name in JobPublic.model_fields if name != "preview_url"}, preview_url=preview
    )


status_router = APIRouter(tags=["status"], dependencies=TOKEN_REQUIRED, responses=V1_ERRORS)
devices_router = APIRouter(prefix="/v1", tags=["devices"], dependencies=TOKEN_REQUIRED, responses=V1_ERRORS)
printer_router = APIRouter(prefix="/v1/printer", tags=["printer"], dependencies=TOKEN_REQUIRED, responses=V1_ERRORS)


@status_router.get("/v1/status")
async def status(state: StateDep) -> Status:
    """Devices, online or offline, how far behind the push to central is, outbox depth and the print queue."""
    settings = state.settings
    queue = state.devices.printer if state.devices else None
    # One read of the database, the figures /metrics shows, off the event loop.
    figures = await aread_station_figures(state.engine, queue.printer_id if queue is not None else None)
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
        printer = (
            queue.status_with(figures.print_jobs) if queue is not None and figures.print_jobs is not None else None
        )
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
    return Status(
        version=__version__,
        store_id=settings.store.id,
        store_name=settings.store.name,
        store_timezone=settings.store.timezone,
        station_id=settings.station.id,
        station_kind=settings.station.kind,
        database=database,
        checkout=checkout,
    )


@status_router.get("/v1/sync")
def sync_status(sync: SyncDep) -> SyncPublic:
    """Push and pull health, outbox depth (pending, and rejected rows that need a person) and the feed cursor."""
    status = sync.status()

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


@status_router.post("/v1/sync", responses=error_responses(SyncFailed))
async def sync_now(sync: SyncDep) -> SyncRun:
    """Push the outbox and pull member changes now (the till's "sync now" button); 503 if central is down."""
    reports = {}
    for name, job in (("pushed", sync.push_job), ("pulled", sync.pull_job)):
        try:
            report = await job.refresh()  # after a run under way; recorded, so the till's view of central follows
        except CentralError as exc:
            raise SyncFailed(f"central cannot be reached or refused: {exc}") from exc
        reports[name] = asdict(report)
    return SyncRun.model_validate(reports)


@devices_router.get("/devices")
def list_devices(state: StateDep, devices: DevicesDep) -> DevicesPublic:
    """The station's scanners and printer, as their drivers and the print queue last saw them."""
    return _devices_public(state, devices)


def _devices_public(state: AgentState, devices: StationDevices) -> DevicesPublic:
    scanners = [
        ScannerPublic(
            id=reader.device_id,
            state=reader.status.state.value,
            reason=reader.status.reason,
            since=reader.status.since,
            simulated=isinstance(reader, TakesScans),
        )
        for reader in devices.scanners.values()
    ]
    printer = None
    if devices.printer is not None and state.settings.devices.printer is not None:
        queue = devices.printer.status
        printer = PrinterPublic(
            id=queue.printer_id,
            url=state.settings.devices.printer.url,
            state=queue.state.value,
            reason=queue.reason,
            queued=queue.queued,
            uncertain=queue.uncertain,
            simulated=isinstance(devices.printer_connection, HasPreviews),
        )
    return DevicesPublic(scanners=scanners, printer=printer)


@devices_router.post("/devices/{device_id}/scan", status_code=202, responses=error_responses(NotFound, NotSimulated))
def simulate_scan(device_id: str, scan: ScanIn, devices: DevicesDep) -> Accepted:
    """Hand a code to a simulated scanner (`sim://`), as if it had been scanned."""
    reader = devices.scanners.get(device_id)
    if reader is None:
        raise NotFound(f"no scanner {device_id} at this station")
    if not isinstance(reader, TakesScans):
        raise NotSimulated(f"scanner {device_id} is a real device; only sim:// scanners take scans over the API")
    reader.inject(scan.text)
    return Accepted()


@devices_router.get("/scans")
def recent_scans(scans: ScansDep) -> list[ScanPublic]:
    """The station's latest scans, newest first, secret codes masked."""
    return [ScanPublic.model_validate(scan.public()) for scan in reversed(scans.recent)]


@printer_router.get("", responses=error_responses(NotFound))
def printer_status(state: StateDep, devices: DevicesDep, queue: PrinterDep) -> PrinterPublic:
    """The receipt printer and its queue: 404 when the station has none."""
    printer = _devices_public(state, devices).printer
    assert printer is not None, "a configured printer is listed with the devices"
    return printer


@printer_router.get("/jobs", responses=error_responses(NotFound))
async def jobs(devices: DevicesDep, queue: PrinterDep, status: str | None = None) -> list[JobPublic]:
    """The print queue's jobs, newest first; `status` (queued, printing, uncertain, printed, cancelled) narrows."""
    return [_job_public(devices.printer_connection, job) for job in await queue.ajobs(status)]


@printer_router.post("/test-page", responses=error_responses(NotFound))
def print_test_page(state: StateDep, devices: DevicesDep, queue: PrinterDep) -> JobPublic:
    """Print a test page: the store's name, the character sets, a barcode and a QR code."""
    document = test_page(state.settings.store.name, devices.columns)
    job = queue.enqueue(f"test-{new_transaction_id()}", devices.render(document), purpose="test")
    return _job_public(devices.printer_connection, job)


@printer_router.post("/jobs/{job_id}/{action}", responses=error_responses(NotFound, PrintJobConflict))
def job_action(job_id: str, action: str, devices: DevicesDep, queue: PrinterDep) -> JobPublic:
    """cancel (queued or uncertain), release (uncertain: it did not print, send again), mark-printed (uncertain)."""
    actions = {"cancel": queue.cancel, "release": queue.release, "mark-printed": queue.mark_printed}
    if action not in actions:
        raise NotFound(f"unknown action {action!r}; one of {', '.join(actions)}")
    try:
        return _job_public(devices.printer_connection, actions[action](job_id))
    except JobNotFound as exc:
        raise NotFound(str(exc)) from exc
    except JobStateError as exc:
        raise PrintJobConflict(str(exc)) from exc


@printer_router.get(
    "/jobs/{job_id}/preview.png",
    response_class=FileResponse,
    dependencies=[Depends(accepts_token_in_query)],
    responses={200: {"content": {"image/png": {}}, "description": "the paper, drawn"}, **error_responses(NotFound)},
)
async def job_preview(job_id: str, devices: DevicesDep, queue: PrinterDep) -> FileResponse:
    """A picture of a printed job's paper (simulated printers only); an <img> may carry the token as `?token=`."""
    connection = devices.printer_connection
    if not isinstance(connection, HasPreviews):
        raise NotFound("previews exist for simulated printers only")
    data = await queue.store.adata(job_id)
    path = await asyncio.to_thread(connection.preview_of, data) if data is not None else None
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
    content.setdefault("message_zh", None)  # always there (null when there is none), so a screen reads one key
    return JSONResponse(content, status_code=status, headers=headers)


def create_app(lifespan, api_token: str = "") -> FastAPI:
    app = FastAPIOffline(
        redoc_url=None,  # ReDoc fetches its logo from a CDN: Swagger UI alone is whole offline
        title="POS Edge Agent",
        version=__version__,
        lifespan=lifespan,
        description=DESCRIPTION,
    )
    app.state.api_token = api_token  # what `require_token` checks
    app.openapi = lambda: openapi_document(app)  # type: ignore[method-assign]

    @app.middleware("http")
    async def idempotent(request: Request, call_next):
        """A request sent again with its Idempotency-Key gets the first answer (agent/idempotency.py). Runs after
        the token check (middleware declared first runs inner)."""
        state = getattr(request.app.state, "agent", None)
        if state is None:
            return await call_next(request)
        try:
            return await answer_once(request, call_next, state.idempotency)
        except AgentError as exc:
            return _answer(exc)

    @app.middleware("http")
    async def token_first(request: Request, call_next):
        """The same check as the /v1 routers' `require_token`, made before the request is read: a request without
        the token is refused whatever its body."""
        if request.url.path.startswith("/v1/"):
            try:
                check_token(request, await bearer(request))
            except Unauthorized as exc:
                return _answer(exc)
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
    app.include_router(membership_router)
    app.include_router(help_router)
    app.mount("/console", StaticFiles(directory=STATIC / "console", html=True), name="console")
    app.mount("/kiosk", StaticFiles(directory=STATIC / "kiosk", html=True), name="kiosk")
    app.mount("/till", StaticFiles(directory=STATIC / "till", html=True), name="till")
    app.mount("/shared", StaticFiles(directory=STATIC / "shared"), name="shared")  # what both screens use

    @app.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse("/console/")

    return app


IDEMPOTENCY_KEY_PARAMETER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "maxLength": 255},
    "description": "one per user action (a UUID): the same key again gets the first answer and acts once; another "
    "request with it is 409 idempotency_mismatch; kept 24 h (docs/checkout.md, Retrying safely)",
}


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, with every error answer filed as JSON: FastAPI files a route's extra responses under the
    route's own media type, so an event stream's 404 would read as an event stream."""
    if app.openapi_schema is None:
        document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        for path, operations in document["paths"].items():
            for method, operation in operations.items():
                if method != "get" and path.startswith("/v1/"):
                    operation.setdefault("parameters", []).append(IDEMPOTENCY_KEY_PARAMETER)
                for status, response in operation.get("responses", {}).items():
                    content = response.get("content", {})
                    for media_type in [m for m in content if not status.startswith("2") and m != "application/json"]:
                        content["application/json"] = content.pop(media_type)
        app.openapi_schema = document
    return app.openapi_schema


def openapi_json(app: FastAPI) -> str:
    """The document as checked into docs/agent-openapi.json (`pos-edge openapi`)."""
    return json.dumps(app.openapi(), indent=2, ensure_ascii=False) + "\n"
