"""What handlers declare they need, as typed aliases: `SessionDep`, `ReadSessionDep`, `CurrentStore`, `Now`,
`SettingsDep`. Tests swap any of them through `app.dependency_overrides` (e.g. `get_now` to move time)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Annotated

import sqlalchemy as sa
from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from central import stores
from central.clock import utcnow
from central.config import Settings
from central.db import CentralSession, read_session, write_session
from central.errors import CentralError, Forbidden, Unauthorized

_bearer = HTTPBearer(auto_error=False, description="the store's token, from `pos-central store add`")


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_engine(request: Request) -> sa.Engine:
    return request.app.state.engine


def get_now() -> datetime:
    return utcnow()


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[sa.Engine, Depends(get_engine)]
Now = Annotated[datetime, Depends(get_now)]


def get_session(engine: EngineDep) -> Iterator[CentralSession]:
    with write_session(engine) as session:
        yield session


def get_read_session(engine: EngineDep) -> Iterator[CentralSession]:
    with read_session(engine) as session:
        yield session


SessionDep = Annotated[CentralSession, Depends(get_session)]
ReadSessionDep = Annotated[CentralSession, Depends(get_read_session)]


def current_store(
    engine: EngineDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    x_store_id: Annotated[str | None, Header(description="the calling store's id; must be the token's store")] = None,
) -> str:
    """The calling store's id: the token's store, which must also be the store the request says it is."""
    if credentials is None or not credentials.credentials:
        raise Unauthorized("send the store's token: Authorization: Bearer <token>")
    with read_session(engine) as session:
        store = stores.by_token(session, credentials.credentials)
    if store is None:
        raise Unauthorized("the store token is not valid; check central.token in the store's settings")
    if not x_store_id:
        raise CentralError("send the store's id in the X-Store-Id header", code="store_id_missing")
    if x_store_id != store.id:
        raise Forbidden(f"this token is not store {x_store_id}'s")
    return store.id


CurrentStore = Annotated[str, Depends(current_store)]
