"""Members: the change feed for the stores' caches, online lookup, enrolment at a kiosk."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response

from central import contract, feed, identity
from central.contract import PaymentState
from central.deps import CurrentStore, EngineDep, Now, ReadSessionDep, SessionDep, SettingsDep
from central.errors import CentralError, Conflict, Invalid, NotFound
from central.models import IdempotencyRecord, Payment
from central.routes.payments import get_gateway

router = APIRouter(prefix="/members", tags=["members"])


@router.get("/changes", response_model=contract.ChangesPage)
def changes(
    request: Request,
    engine: EngineDep,
    session: ReadSessionDep,
    store: CurrentStore,
    settings: SettingsDep,
    now: Now,
    cursor: Annotated[str | None, Query(description="next_cursor of the last page applied; none to start")] = None,
    limit: Annotated[int | None, Query(ge=1, description="page size; capped by the service's max_page_size")] = None,
) -> Response:
    """Members changed after `cursor`, in version order: upserts with their full state, and tombstones."""
    size = min(limit or settings.default_page_size, settings.max_page_size)
    pages = feed.page_cache(engine)
    page = pages.page(session, feed.parse_cursor(cursor), size, now)
    pages.build_next(page, size, now)  # while this store reads this one
    request.app.state.metrics.feed_served(store, page.next_cursor)  # how far behind the head this store is left
    # Already JSON (central/feed.py writes it from the rows): FastAPI's response model only documents it.
    return Response(page.body, media_type="application/json")


@router.get("/lookup", responses={404: {"model": contract.ErrorBody}})
def lookup(
    session: ReadSessionDep,
    store: CurrentStore,
    now: Now,
    card_no: Annotated[str | None, Query(max_length=128)] = None,
    unionid: Annotated[str | None, Query(max_length=128)] = None,
    phone_hash: Annotated[str | None, Query(pattern=contract.HASH_PATTERN)] = None,
    appid: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="with openid")] = None,
    openid: Annotated[str | None, Query(max_length=128, description="with appid")] = None,
) -> contract.MemberLookup:
    """The member holding one identifier: give exactly one of card_no, unionid, phone_hash, or appid + openid."""
    given = [
        (kind, value)
        for kind, value in (("card_no", card_no), ("unionid", unionid), ("phone_hash", phone_hash))
        if value
    ]
    if (appid is None) != (openid is None):
        raise Invalid("give appid and openid together")
    if openid:
        given.append((identity.openid_kind(appid), openid))
    if len(given) != 1:
        raise Invalid("give exactly one of card_no, unionid, phone_hash, or appid with openid")
    kind, value = given[0]
    member_id = identity.owner(session, kind, value)
    found = feed.snapshot(session, member_id, now) if member_id else None
    if found is None:
        raise NotFound(f"no member with this {kind.split(':')[0]}")
    return contract.MemberLookup(member=found)


@router.post(
    "",
    status_code=201,
    responses={
        200: {"model": contract.EnrolResult, "description": "an existing member"},
        409: {"model": contract.ErrorBody},
    },
)
def enrol(
    request: contract.EnrolRequest,
    response: Response,
    http: Request,
    session: SessionDep,
    store: CurrentStore,
    settings: SettingsDep,
    now: Now,
    idempotency_key: Annotated[
        str | None,
        Header(min_length=8, max_length=128, description="chosen by the client; the same key answers the same again"),
    ] = None,
) -> contract.EnrolResult:
    """Enrol a customer (phone with consent, recorded with the notice they read), or answer the member they already
    are (200). A new member gets `welcome_points` and, with `card_no_prefix` set, a card number."""
    if idempotency_key is None:
        raise CentralError(
            "send an Idempotency-Key header (e.g. a UUID) so a retry cannot enrol twice", code="idempotency_key_missing"
        )
    # Keyed, because the request may hold a phone number in clear, and a plain hash of one is easy to reverse.
    canonical = json.dumps(request.model_dump(mode="json"), sort_keys=True).encode()
    fingerprint = hmac.new(settings.key_bytes(), canonical, hashlib.sha256).hexdigest()
    feed.lock(session)  # also serializes enrolments, so two tries of one key cannot both go through
    earlier = session.get(IdempotencyRecord, (store, idempotency_key))
    if earlier is not None:
        if earlier.request_hash != fingerprint:
            raise Conflict(
                "this Idempotency-Key was used for a different request; use a new key", code="idempotency_key_reused"
            )
        response.status_code = earlier.status_code
        response.headers["Idempotent-Replayed"] = "true"
        return contract.EnrolResult.model_validate(earlier.response)

    if request.out_trade_no is not None:
        request = request.model_copy(update={"openid": _payer(session, store, http, request.out_trade_no)})
    joined = identity.join(
        session, request, settings.key_bytes(), now, store, settings.welcome_points, settings.card_no_prefix
    )
    feed.assign_versions(session, now)  # the answer shows the member as committed
    result = contract.EnrolResult(
        member=feed.snapshot(session, joined.member_id, now),
        created=joined.created,
        welcome_points=joined.welcome_points,
    )
    response.status_code = 201 if joined.created else 200
    session.add(
        IdempotencyRecord(
            store_id=store,
            key=idempotency_key,
            request_hash=fingerprint,
            status_code=response.status_code,
            response=result.model_dump(mode="json"),
            created_at=now,
        )
    )
    session.commit()
    return result


def _payer(session: SessionDep, store: str, http: Request, out_trade_no: str) -> contract.OpenId:
    """The payer of this store's paid code payment, as the provider told central."""
    payment = session.get(Payment, out_trade_no)
    if payment is None or payment.store_id != store or payment.state != PaymentState.SUCCESS:
        raise Invalid(f"no paid payment {out_trade_no} at this store", code="payment_not_found")
    kind = get_gateway(http).payer_kind(payment.provider)
    if not payment.payer_id or kind is None:
        raise Invalid("the provider did not say who paid: join with the phone number only", code="payer_unknown")
    return contract.OpenId(appid=kind.split(":", 1)[1], openid=payment.payer_id)
