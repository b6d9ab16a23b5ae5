"""The running agent: opens its parts in order, serves the local API, and closes them in reverse on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import FrameType

import sqlalchemy as sa
import uvicorn
from fastapi import FastAPI

from agent import __version__
from agent.api import create_app
from agent.approval import Approvals
from agent.central_client import CentralClient
from agent.checkout import Checkout
from agent.clock import SYSTEM_CLOCK
from agent.connectivity import Connectivity
from agent.db import open_database, schema_revision
from agent.devices import StationDevices
from agent.disk_space import MB, DiskSpace
from agent.events import EventHub
from agent.help_calls import HelpCalls
from agent.idempotency import IdempotencyStore
from agent.identify import Identifier
from agent.journal import Journal
from agent.member_cache import MemberCache
from agent.member_code_gate import MemberCodeGate
from agent.membership import Membership
from agent.metrics import AgentMetrics
from agent.open_sales import OpenSaleStore
from agent.receipt_printing import ReceiptPrinting
from agent.refunds import Refunds
from agent.scans import ScanRouter
from agent.scheduler import build_scheduler
from agent.settings import Settings
from agent.sync import Sync
from agent.systemd_notify import Notifier, keep_alive, report_status, status_line, watchdog_interval_s

log = logging.getLogger(__name__)

# Seconds the API waits for requests in flight at shutdown before cancelling them (uvicorn's default is forever).
GRACEFUL_SHUTDOWN_S = 5
# Seconds the receipt being printed may take to finish at shutdown.
PRINT_DEADLINE_S = 10
# How often `systemctl status` is brought up to date (only a changed line is sent).
STATUS_EVERY_S = 5
# How often the screens' status is checked for a change to push (event `status`).
STATUS_PUSH_EVERY_S = 1.0


@dataclass
class AgentState:
    """Everything a request handler may need, opened once for the life of the process."""

    settings: Settings
    engine: sa.Engine
    members: MemberCache
    journal: Journal
    member_codes: MemberCodeGate
    open_sales: OpenSaleStore  # sales and refunds in progress, kept on disk until journaled
    idempotency: IdempotencyStore  # the local API's Idempotency-Keys and their answers
    approvals: Approvals  # the supervisors and their lock-out
    scans: ScanRouter | None = None
    devices: StationDevices | None = None
    sync: Sync | None = None
    checkout: Checkout | None = None
    refunds: Refunds | None = None
    membership: Membership | None = None  # joining and the customer's wallet
    help_calls: HelpCalls | None = None  # a kiosk's calls for staff, sent and heard
    receipts: ReceiptPrinting | None = None  # None: the station has no printer
    metrics: AgentMetrics | None = None  # what /metrics shows
    disk: DiskSpace | None = None  # free space under the database: below storage.min_free_mb no sale starts


def open_state(settings: Settings) -> AgentState:
    engine = open_database(settings.storage.database)
    log.info("database ready", extra={"path": str(settings.storage.database), "schema": schema_revision(engine)})
    return AgentState(
        settings=settings,
        engine=engine,
        disk=DiskSpace(settings.storage.database.parent, settings.storage.min_free_mb * MB),
        members=MemberCache(engine, settings.privacy.key_bytes()),
        journal=Journal(engine, settings.station.id, settings.store.zone, settings.store.business_day_cutoff_hour),
        member_codes=MemberCodeGate(engine, settings.member_codes.window_s, settings.member_codes.clock_skew_s),
        open_sales=OpenSaleStore(engine),
        idempotency=IdempotencyStore(engine),
        approvals=Approvals(settings.approval),
    )


def open_sync(settings: Settings, state: AgentState) -> Sync:
    central = settings.central
    return Sync(
        engine=state.engine,
        cache=state.members,
        gate=state.member_codes,
        client=CentralClient(central, settings.store.id),
        batch_size=central.batch_size,
        page_size=central.page_size,
    )


def open_checkout(
    settings: Settings, state: AgentState, sync: Sync, devices: StationDevices, scans: ScanRouter
) -> tuple[Checkout, Refunds]:
    """The station's checkout and refunds, sharing the sync's client and its view of whether central is up."""
    client = sync.client
    if settings.devices.printer is not None:
        state.receipts = ReceiptPrinting(settings, devices.render, devices.columns, lambda: devices.printer)
    clock = SYSTEM_CLOCK  # the one clock the sale's time rules read
    connectivity = Connectivity(client, sync.jobs, probe_timeout_s=settings.offline.probe_timeout_s, clock=clock)
    identifier = Identifier(state.members, state.member_codes, client, connectivity.online)
    # A sale or refund just journaled: send it now rather than at the next interval, so points are confirmed
    # quickly; without a store token there is nobody to send it to.
    push_soon = sync.push_job.request_refresh if settings.central.token.get_secret_value() else None

    checkout = Checkout(
        settings,
        state.engine,
        state.members,
        state.journal,
        identifier,
        connectivity,
        client,
        EventHub(),
        receipts=state.receipts,
        push_soon=push_soon,
        disk=state.disk,
        clock=clock,
    )
    refunds = Refunds(
        settings,
        state.engine,
        state.journal,
        state.members,
        client,
        connectivity,
        receipts=state.receipts,
        push_soon=push_soon,
        clock=clock,
        open_sales=state.open_sales,
        events=checkout.events,
    )
    membership = Membership(
        settings, identifier, state.members, state.journal, client, connectivity, checkout.events, checkout.sales.find
    )
    checkout.wallet = membership
    scans.subscribe(checkout.on_scan)
    state.checkout, state.refunds, state.membership = checkout, refunds, membership
    state.help_calls = HelpCalls(settings, checkout.events, clock)
    return checkout, refunds


def build_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Open in order: database, then devices; close in reverse.
        state = await asyncio.to_thread(open_state, settings)
        scans = ScanRouter(asyncio.get_running_loop(), settings.codes.rules())
        devices = StationDevices(settings, state.engine, scans)
        sync = open_sync(settings, state)
        state.scans, state.devices, state.sync = scans, devices, sync
        scheduler = build_scheduler(settings, sync)
        checkout, refunds = open_checkout(settings, state, sync, devices, scans)
        status_events: asyncio.Task[None] | None = None
        try:
            await asyncio.to_thread(devices.start)
            if devices.printer is not None:
                devices.printer.on_printed = checkout.on_printed_threadsafe(asyncio.get_running_loop())
            state.metrics = AgentMetrics.for_settings(settings)
            state.metrics.watch(state)  # before recovery: a sale it finishes is counted
            await checkout.recover()
            await refunds.recover()
            scheduler.start()  # backups and retention run even where sync with central is off
            if not settings.central.token.get_secret_value():
                log.warning("sync with central is off: set central.token (POS_EDGE_CENTRAL__TOKEN)")
            app.state.agent = state
            status_events = asyncio.create_task(
                report_status(ScreenStatus(checkout.events), lambda: read_status(state), STATUS_PUSH_EVERY_S),
                name="status-events",
            )
            url = f"http://{settings.api.host}:{settings.api.port}"
            log.info(
                "agent ready",
                extra={
                    "version": __version__,
                    "store": settings.store.id,
                    "station": settings.station.id,
                    # The screens take the API token from the URL fragment: open them with #token=<api.token>.
                    "till": f"{url}/till/",
                    "kiosk": f"{url}/kiosk/",
                    "console": f"{url}/console/",
                },
            )
            yield
        finally:
            # Reverse order: no new jobs, devices (the receipt being printed may finish), then the database.
            if scheduler.running:
                scheduler.shutdown(wait=False)
            if status_events is not None:
                status_events.cancel()
            await checkout.close()
            await refunds.close()
            await sync.close()
            await sync.client.aclose()
            await asyncio.to_thread(devices.stop, PRINT_DEADLINE_S)
            state.engine.dispose()
            log.info("agent stopped")

    return create_app(lifespan, settings.api.token.get_secret_value())


def serve(settings: Settings) -> None:
    """Run until SIGINT or SIGTERM. A failed start-up exits instead of serving half-ready."""
    if not settings.api.token.get_secret_value() and not _loopback(settings.api.host):
        log.error(
            "refusing to serve the API on %s without a token: set api.token (POS_EDGE_API__TOKEN)", settings.api.host
        )
        raise SystemExit(2)
    app = build_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.api.host,
        port=settings.api.port,
        log_config=None,  # keep the agent's own one-line log format
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    server = NotifyingServer(config, Notifier(), lambda: getattr(app.state, "agent", None))
    server.run()
    if not server.started:
        raise SystemExit(1)
    if signal.SIGINT in server.stopped_by:
        # uvicorn raises the signal again once shut down, but asyncio's runner may already be past its last await
        # and swallow it: say "stopped by Ctrl-C" (exit 130) ourselves.
        raise KeyboardInterrupt


class NotifyingServer(uvicorn.Server):
    """uvicorn's server that tells systemd when the till can sell, that its loop is alive, and when it stops.

    READY=1 goes out only once the database and devices are open (the lifespan) and the API is listening, so a
    unit ordered after this one (the kiosk screen) starts on a working API.
    """

    def __init__(self, config: uvicorn.Config, notifier: Notifier, agent: Callable[[], AgentState | None]):
        super().__init__(config)
        self.notifier = notifier
        self.agent = agent
        self._tasks: list[asyncio.Task] = []
        self.stopped_by: list[int] = []  # the signals that stopped it

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.stopped_by.append(sig)
        super().handle_exit(sig, frame)

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        state = self.agent()
        if not self.started or state is None:
            return
        self.notifier.ready(await read_status(state))
        interval = watchdog_interval_s()
        if interval is not None:
            self._tasks.append(asyncio.create_task(keep_alive(self.notifier, interval), name="systemd-watchdog"))
        if self.notifier.enabled:
            self._tasks.append(
                asyncio.create_task(
                    report_status(self.notifier, lambda: read_status(state), STATUS_EVERY_S), name="systemd-status"
                )
            )

    async def shutdown(self, sockets=None) -> None:
        self.notifier.stopping("stopping: finishing requests in flight and the receipt being printed")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await super().shutdown(sockets)
        self.notifier.close()


@dataclass
class ScreenStatus:
    """The screens' side of the status line: a `status` event on the station's stream each time it changes, so
    they hear it within a second of the agent knowing."""

    events: EventHub

    def status(self, status: str) -> bool:
        self.events.publish("status", None, status)
        return True


async def read_status(state: AgentState) -> str:
    assert state.sync is not None, "the agent is ready, so its sync is open"
    sync = await asyncio.to_thread(state.sync.status)  # reads the outbox: off the loop
    printer = state.devices.printer.status.state.value if state.devices and state.devices.printer else None
    checkout = state.checkout
    online = await checkout.connectivity.online() if checkout else False
    return status_line(online, sync.outbox_pending, printer, bool(checkout and checkout.current))


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
