"""Stores and their bearer tokens. Only a token's SHA-256 is stored, so a copy of the database cannot be used
to call the service as a store."""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import datetime

from sqlmodel import Session, select

from central.errors import Conflict, Invalid
from central.models import Store

STORE_ID = re.compile(r"[A-Za-z0-9_-]{1,16}")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


def by_token(session: Session, token: str) -> Store | None:
    return session.exec(select(Store).where(Store.token_hash == hash_token(token))).first()


def add_store(
    session: Session,
    store_id: str,
    now: datetime,
    *,
    name: str = "",
    token: str | None = None,
    replace_token: bool = False,
) -> str:
    """Register a store (or give an existing one a new token with `replace_token`); returns the token, which is
    shown this once and never stored."""
    if not STORE_ID.fullmatch(store_id):
        raise Invalid("a store id is 1..16 characters of A-Z a-z 0-9 _ -")
    token = token or new_token()
    if len(token) < 16:
        raise Invalid("a store token must be at least 16 characters")
    store = session.get(Store, store_id)
    if store is not None and not replace_token:
        raise Conflict(f"store {store_id} exists; to issue it a new token (the old one stops working) use --new-token")
    if store is None:
        store = Store(id=store_id, name=name, token_hash=hash_token(token), created_at=now)
    else:
        store.token_hash = hash_token(token)
        store.name = name or store.name
    session.add(store)
    session.flush()
    return token
