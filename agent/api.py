"""The agent's local HTTP API for the store's POS software and the kiosk UI."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from pydantic import BaseModel

from agent import __version__
from agent.db import reader, schema_revision


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


def get_state(request: Request) -> Any:
    return request.app.state.agent


StateDep = Annotated[Any, Depends(get_state)]


def create_app(lifespan) -> FastAPI:
    app = FastAPI(title="POS Edge Agent", version=__version__, lifespan=lifespan)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/status")
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

    return app
