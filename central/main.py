"""The web app: routers assembled under /v1, errors answered as `ErrorBody`, the OpenAPI document."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi.routing import iter_route_contexts
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from starlette.exceptions import HTTPException

from central import __version__, contract
from central.background import Background
from central.config import Settings
from central.errors import CentralError, Unauthorized
from central.leases import Leases, instance_name
from central.metrics import CentralMetrics
from central.payments.brand_cards import client_from_settings
from central.payments.providers import build_providers
from central.routes import e_receipts, members, payments, stores, transactions, wechat
from central.routes import keys as keys_routes

log = logging.getLogger(__name__)

TITLE = "POS central identity & card service"
DESCRIPTION = (
    "Reference central service for the POS Edge Agent (docs/ARCHITECTURE.md). Every /v1 request carries "
    "`Authorization: Bearer <store token>` and `X-Store-Id`. Models: `central/contract.py`."
)
_ERRORS = {status: {"model": contract.ErrorBody} for status in (400, 401, 403, 422)}
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def create_app(settings: Settings, engine: sa.Engine, *, run_jobs: bool | None = None) -> FastAPI:
    """The app on an engine whose schema is already at head (see `central.db.open_database`). `run_jobs`: whether
    this process also runs the periodic jobs (default: the settings' `run_jobs`)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Payments run as tasks in this loop; unfinished ones no live process drives are taken over (leases).
        background = Background(
            settings,
            engine,
            app.state.payment_providers,
            app.state.leases,
            run_jobs=app.state.run_jobs,
            metrics=app.state.metrics,
            brand_card_api=app.state.brand_card_api,
            payment_options=app.state.payment_options,
        )
        await background.start()
        app.state.gateway, app.state.card_sync = background.gateway, background.card_sync
        app.state.orphan_watch, app.state.follower_sync = background.orphan_watch, background.follower_sync
        try:
            yield
        finally:
            app.state.gateway = app.state.card_sync = app.state.orphan_watch = app.state.follower_sync = None
            await background.stop()

    # Swagger UI from the package, not a CDN; no ReDoc, which fetches its logo from one.
    app = FastAPIOffline(title=TITLE, version=__version__, description=DESCRIPTION, lifespan=lifespan, redoc_url=None)
    app.state.settings = settings
    app.state.engine = engine
    app.state.payment_providers = build_providers(settings)
    # The merchant member card's Brand API client (its keys are read here, as the providers' are).
    app.state.brand_card_api = client_from_settings(settings) if settings.wechat_member_card == "brand" else None
    app.state.payment_options = {}  # tests: Gateway keyword arguments (clock, sleep, timings)
    app.state.run_jobs = settings.run_jobs if run_jobs is None else run_jobs
    # This process's name among the replicas on the database: the same after a restart, so it takes its own back.
    app.state.leases = Leases(engine, settings.instance or instance_name(settings.port), settings.lease_seconds)
    app.state.gateway = app.state.card_sync = app.state.orphan_watch = app.state.follower_sync = None
    app.state.metrics = CentralMetrics(engine)
    app.add_middleware(Overload, limit=settings.max_requests_in_flight)
    app.add_middleware(RequestMetrics, metrics=app.state.metrics)
    for router in (members.router, transactions.router, stores.router, keys_routes.router, payments.router):
        app.include_router(router, prefix=contract.API_PREFIX, responses=_ERRORS)
    app.include_router(wechat.router, prefix=contract.API_PREFIX)  # the mini program's; its lifespan: WeChat clients
    app.include_router(e_receipts.router)  # /e/{token}: a receipt's QR code, for the customer's phone

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """Liveness, without credentials."""
        return {"status": "ok"}

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        """Prometheus text format, for the bearer token `metrics_token`; refused while none is set."""
        expected = settings.metrics_token.get_secret_value() if settings.metrics_token else ""
        sent = request.headers.get("authorization", "")
        given = sent[7:] if sent.lower().startswith("bearer ") else ""
        if not expected or not secrets.compare_digest(given.encode(), expected.encode()):
            raise Unauthorized(
                "send the metrics token: Authorization: Bearer <metrics_token>"
                if expected
                else "metrics are off: set metrics_token (POS_CENTRAL_METRICS_TOKEN) and send it as a bearer token"
            )
        # Collecting reads the database: in a worker thread, never on the loop.
        return Response(
            await asyncio.to_thread(generate_latest, app.state.metrics.registry), media_type=CONTENT_TYPE_PLAIN_0_0_4
        )

    app.add_exception_handler(CentralError, _central_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(sa.exc.OperationalError, _database_unavailable)
    app.add_exception_handler(sa.exc.TimeoutError, _database_unavailable)  # no free connection in the pool
    app.add_exception_handler(Exception, _internal_error)
    app.openapi = lambda: openapi_document(app)  # type: ignore[method-assign]
    return app


class RequestMetrics:
    """Counts every HTTP answer by route template and status, and times it (an ASGI middleware: no body copy)."""

    def __init__(self, app, metrics: CentralMetrics):
        self.app = app
        self.metrics = metrics
        self._templates: dict[int, str] | None = None  # route -> its whole path template, prefixes included

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets when the app raises before answering

        async def sending(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            method = scope["method"] if scope["method"] in METHODS else "other"  # a client may send any word
            self.metrics.request_done(method, self._template(scope), status, time.perf_counter() - started)

    def _template(self, scope) -> str:
        """The matched route's template (`/v1/payments/{out_trade_no}`), never the path as sent: it holds ids."""
        route = scope.get("route")  # set by the router once a route matched
        if route is None:
            return "unmatched"
        if self._templates is None:  # the routes are all in place by the first request
            self._templates = {id(c.original_route): c.path for c in iter_route_contexts(scope["app"].routes) if c.path}
        return self._templates.get(id(route)) or getattr(route, "path", None) or "unmatched"


class Overload:
    """Answers 503 with Retry-After at once when `limit` requests are already being worked on in this process:
    a till retries after the pause (the agent honours Retry-After) instead of every request slowing down together
    until they all time out. Health checks, metrics and long-polls (`?wait=`, which wait on an event and hold no
    thread or connection while they do) are not counted."""

    EXEMPT = frozenset({"/healthz", "/metrics"})

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit
        self.in_flight = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in self.EXEMPT or b"wait=" in scope.get("query_string", b""):
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            response = _error(
                503, "overloaded", "central is busy; retry after the pause it asks for", headers={"Retry-After": "1"}
            )
            await response(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


def _error(
    status: int,
    code: str,
    message: str,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = contract.ErrorBody(error=code, message=message, details=details)
    return JSONResponse(body.model_dump(mode="json", exclude_none=True), status_code=status, headers=headers)


async def _central_error(request: Request, exc: CentralError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
    return _error(exc.status, exc.code, exc.message, headers=headers)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    details = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
    first = details[0] if details else {"loc": [], "msg": "invalid"}
    where = ".".join(str(part) for part in first["loc"])
    return _error(422, "invalid", f"{where}: {first['msg']}", details)


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    code = (
        HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_")
        if exc.status_code in HTTPStatus._value2member_map_
        else "error"
    )
    return _error(exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None))


async def _database_unavailable(request: Request, exc: sa.exc.OperationalError | sa.exc.TimeoutError) -> JSONResponse:
    # Locked, restarting, unreachable, a statement cancelled by its timeout, or every pooled connection busy:
    # nothing was committed, and the same request may succeed shortly.
    log.warning("database unavailable: %s", getattr(exc, "orig", None) or exc)
    return _error(
        503, "unavailable", "the database is busy or unreachable; retry shortly", headers={"Retry-After": "1"}
    )


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return _error(500, "internal", "unexpected error at central; nothing was committed, retry later")


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document, with the contract's batch models that `POST /v1/transactions:batch` documents
    but reads itself (see `central.routes.transactions`)."""
    if app.openapi_schema is None:
        document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        batch = contract.BatchIn.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, schema in batch.pop("$defs", {}).items():
            schemas.setdefault(name, schema)
        schemas["BatchIn"] = batch
        document["components"]["schemas"] = dict(sorted(schemas.items()))
        app.openapi_schema = document
    return app.openapi_schema


def openapi_json(app: FastAPI) -> str:
    """The document as checked into docs/openapi.json."""
    return json.dumps(app.openapi(), indent=2, ensure_ascii=False) + "\n"
