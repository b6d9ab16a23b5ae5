"""The agent's local HTTP API for the store's POS software and the kiosk UI."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from agent import __version__
from agent.db import reader, schema_revision
from agent.ids import new_transaction_id
from agent.print_queue import JobNotFound, JobStateError, JobView
from agent.receipts import test_page
from drivers.simulated import SimulatedPrinter, SimulatedScanner

STATIC = Path(__file__).resolve().parent.parent / "kiosk_ui" / "static"


class DatabaseStatus(BaseModel):
    path: str
    schema_revision: str | None
    members: int
    journal_rows: int
    outbox_pending: int
    outbox_rejected: int


class AgentStatus(BaseModel):
    version: str
    store_id: str
    store_name: str
    station_id: str
    station_kind: str
    database: DatabaseStatus


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
        raise HTTPException(404, "no printer is configured: set [devices.printer] in the settings")
    return state.devices.printer


def _job_public(state: Any, job: JobView) -> JobPublic:
    preview = None
    if isinstance(state.devices.printer_connection, SimulatedPrinter) and job.status == "printed":
        preview = f"/v1/printer/jobs/{job.id}/preview.png"
    return JobPublic(**{name: getattr(job, name) for name in JobPublic.model_fields if name != "preview_url"}, preview_url=preview)


status_router = APIRouter(tags=["status"])
devices_router = APIRouter(prefix="/v1", tags=["devices"])
printer_router = APIRouter(prefix="/v1/printer", tags=["printer"])


@status_router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@status_router.get("/v1/status")
def status(state: StateDep) -> AgentStatus:
    settings = state.settings
    with reader(state.engine) as connection:
        count = lambda sql: connection.exec_driver_sql(sql).scalar_one()  # noqa: E731
        database = DatabaseStatus(
            path=str(settings.storage.database),
            schema_revision=schema_revision(state.engine),
            members=count("SELECT count(*) FROM member"),
            journal_rows=count("SELECT count(*) FROM journal"),
            outbox_pending=count("SELECT count(*) FROM outbox WHERE status = 'pending'"),
            outbox_rejected=count("SELECT count(*) FROM outbox WHERE status = 'rejected'"),
        )
    return AgentStatus(
        version=__version__,
        store_id=settings.store.id,
        store_name=settings.store.name,
        station_id=settings.station.id,
        station_kind=settings.station.kind,
        database=database,
    )


@status_router.get("/v1/sync")
def sync_status(state: StateDep) -> SyncPublic:
    """Push and pull health, outbox depth (pending, and rejected rows that need a person) and the feed cursor."""
    status = state.sync.status()
    health = lambda job: JobHealthPublic(last_success=job.last_success, last_error=job.last_error, failures=job.failures)  # noqa: E731
    return SyncPublic(
        push=health(status.push),
        pull=health(status.pull),
        outbox_pending=status.outbox_pending,
        outbox_rejected=status.outbox_rejected,
        oldest_pending_at=status.oldest_pending_at,
        member_cursor=status.member_cursor,
    )


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
        raise HTTPException(404, f"no scanner {device_id} at this station")
    if not isinstance(reader, SimulatedScanner):
        raise HTTPException(409, f"scanner {device_id} is a real device; only sim:// scanners take scans over the API")
    reader.inject(scan.text)
    return {"status": "accepted"}


@devices_router.get("/scans")
def recent_scans(state: StateDep) -> list[dict[str, Any]]:
    """The station's latest scans, newest first, secret codes masked."""
    return [scan.public() for scan in reversed(state.scans.recent)]


@printer_router.get("")
def printer_status(state: StateDep) -> PrinterPublic:
    _printer(state)  # 404 when there is none
    return devices(state).printer


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
        raise HTTPException(404, f"unknown action {action!r}; one of {', '.join(actions)}")
    try:
        return _job_public(state, actions[action](job_id))
    except JobNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except JobStateError as exc:
        raise HTTPException(409, str(exc)) from None


@printer_router.get("/jobs/{job_id}/preview.png", response_class=FileResponse)
def job_preview(job_id: str, state: StateDep) -> FileResponse:
    connection = state.devices.printer_connection
    if not isinstance(connection, SimulatedPrinter):
        raise HTTPException(404, "previews exist for simulated printers only")
    with reader(state.engine) as db:
        data = db.exec_driver_sql("SELECT data FROM print_job WHERE id = ?", (job_id,)).scalar()
    path = connection.preview_of(data) if data is not None else None
    if path is None:
        raise HTTPException(404, f"no preview for print job {job_id} (not printed yet?)")
    return FileResponse(path, media_type="image/png")


def create_app(lifespan) -> FastAPI:
    app = FastAPI(title="POS Edge Agent", version=__version__, lifespan=lifespan)
    app.include_router(status_router)
    app.include_router(devices_router)
    app.include_router(printer_router)
    app.mount("/console", StaticFiles(directory=STATIC / "console", html=True), name="console")

    @app.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse("/console/")

    return app
