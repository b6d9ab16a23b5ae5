"""Keys: the public keys agents verify member codes with, offline."""

from __future__ import annotations

from fastapi import APIRouter

from central import contract, keys
from central.deps import CurrentStore, Now, ReadSessionDep

router = APIRouter(prefix="/keys", tags=["keys"])


@router.get("/member-code")
def member_code_keys(session: ReadSessionDep, store: CurrentStore, now: Now) -> contract.PublicKeys:
    """The current member-code key first, then rotated keys until the end of their grace period."""
    return keys.public_keys(session, now)
