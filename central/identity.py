"""Identity: one member behind every way a customer shows up (UnionID, an openid per app, CRM cards, phone).

An identifier belongs to at most one member. When two members turn out to share a UnionID (an openid known
for member B is reported with the UnionID of member A), they are one person: B is merged into A. The
survivor takes over the identifiers, coupons and the points balance; the other becomes a tombstone pointing
at it, and both changes go out on the feed.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session

from central import card, contract, feed
from central.errors import Conflict, Invalid, NotFound
from central.models import Coupon, LedgerEntry, Member, MemberConsent, MemberIdentifier
from central.pii import InvalidPhoneNumber, mask_name, mask_phone, phone_hash

ID_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32: no I, L, O, U to misread
MAX_MERGE_HOPS = 16


class IdentifierTaken(Conflict):
    code = "identifier_taken"


def new_member_id() -> str:
    """`M` + 11 random base32 characters: fits the 16-character member id of member codes."""
    return "M" + "".join(secrets.choice(ID_ALPHABET) for _ in range(11))


def openid_kind(appid: str) -> str:
    return f"openid:{appid}"


def owner(session: Session, kind: str, value: str) -> str | None:
    """The member holding identifier (kind, value); identifiers always point at a live member."""
    return session.execute(
        sa.select(MemberIdentifier.member_id).where(MemberIdentifier.kind == kind, MemberIdentifier.value == value)
    ).scalar()


def resolve(session: Session, member_id: str) -> Member | None:
    """The live member behind `member_id`, following merges; None when there is no such member."""
    member = session.get(Member, member_id)
    for _ in range(MAX_MERGE_HOPS):
        if member is None or member.merged_into is None:
            break
        member = session.get(Member, member.merged_into)
    return None if member is None or member.deleted else member


def create_member(
    session: Session,
    now: datetime,
    *,
    tier: str = "normal",
    display_name: str = "",
    phone_masked: str | None = None,
    member_id: str | None = None,
) -> Member:
    if tier not in card.TIERS:
        raise Invalid(f"unknown tier {tier!r}; one of {', '.join(card.TIERS)}")
    (version,) = feed.next_versions(session, 1)
    member = Member(
        id=member_id or new_member_id(),
        tier=tier,
        display_name=display_name,
        phone_masked=phone_masked,
        version=version,
        created_at=now,
        updated_at=now,
    )
    session.add(member)
    session.flush()
    return member


def attach(session: Session, member_id: str, kind: str, value: str, now: datetime) -> None:
    """Give identifier (kind, value) to a member; IdentifierTaken when another member holds it."""
    current = owner(session, kind, value)
    if current == member_id:
        return
    if current is not None:
        raise IdentifierTaken(f"{kind} already belongs to another member ({current})")
    session.add(MemberIdentifier(kind=kind, value=value, member_id=member_id, created_at=now))
    session.flush()
    feed.touch(session, member_id)


def merge(session: Session, survivor_id: str, other_id: str, now: datetime) -> Member:
    """Merge member `other_id` into `survivor_id`; merging again is a no-op that answers the survivor."""
    survivor = session.get(Member, survivor_id)
    other = session.get(Member, other_id)
    if survivor is None or survivor.deleted:
        raise NotFound(f"no member {survivor_id}")
    if other is None:
        raise NotFound(f"no member {other_id}")
    if other.merged_into == survivor_id:
        return survivor
    if other.deleted:
        raise Conflict(f"member {other_id} was already merged into {other.merged_into}", code="already_merged")
    if survivor_id == other_id:
        raise Invalid("cannot merge a member into itself")

    # ORM-enabled updates, so objects already loaded in this session follow.
    session.execute(
        sa.update(MemberIdentifier).where(MemberIdentifier.member_id == other_id).values(member_id=survivor_id)
    )
    session.execute(sa.update(Coupon).where(Coupon.member_id == other_id).values(member_id=survivor_id))
    # Entries stay with the member who earned them; the balance moves with a pair of entries, so each
    # ledger still adds up and the survivor's balance includes the other's.
    moved = feed.balances(session, [other_id])[other_id]
    source = f"merge:{other_id}"
    card.book(session, other_id, "merge_out", -moved, source, now)
    card.book(session, survivor_id, "merge_in", moved, source, now)
    # Tombstones that pointed at the other member now point at the survivor: one hop, always.
    earlier = session.execute(sa.select(Member.id).where(Member.merged_into == other_id)).scalars().all()
    session.execute(sa.update(Member).where(Member.merged_into == other_id).values(merged_into=survivor_id))

    if card.TIERS.index(other.tier) > card.TIERS.index(survivor.tier):
        survivor.tier = other.tier
    survivor.display_name = survivor.display_name or other.display_name
    survivor.phone_masked = survivor.phone_masked or other.phone_masked
    other.deleted = True
    other.merged_into = survivor_id
    for member_id in (*earlier, other_id, survivor_id):  # the tombstone first, then the survivor's new state
        feed.touch(session, member_id)
    session.flush()
    return survivor


def link_openid(session: Session, appid: str, openid: str, unionid: str, now: datetime) -> str | None:
    """Record that `openid` (of app `appid`) has UnionID `unionid`: attach whichever is new to the member who
    holds the other, or merge two members found to share the UnionID (the UnionID's holder survives).
    Returns the member, or None when neither identifier is known."""
    kind = openid_kind(appid)
    by_openid, by_unionid = owner(session, kind, openid), owner(session, "unionid", unionid)
    if by_openid is None and by_unionid is None:
        return None
    if by_unionid is None:
        attach(session, by_openid, "unionid", unionid, now)
        return by_openid
    if by_openid is None:
        attach(session, by_unionid, kind, openid, now)
        return by_unionid
    if by_openid != by_unionid:
        merge(session, by_unionid, by_openid, now)
    return by_unionid


@dataclass(frozen=True)
class Joined:
    member_id: str
    created: bool
    welcome_points: int = 0


def join(
    session: Session,
    request: contract.EnrolRequest,
    phone_hash_key: bytes,
    now: datetime,
    store_id: str | None = None,
    welcome_points: int = 0,
    card_no_prefix: str | None = None,
) -> Joined:
    """Enrol a customer with their consent recorded (which notice, when, where); a new member gets the welcome
    points, booked once, and a card number to keep when `card_no_prefix` is set."""
    member_id, created = enrol(session, request, phone_hash_key, now)
    return _consented(
        session, member_id, created, "membership", request.notice_version, store_id, now, welcome_points, card_no_prefix
    )


def join_wechat(
    session: Session,
    appid: str,
    openid: str,
    now: datetime,
    *,
    purpose: str,
    notice_version: str | None = None,
    store_id: str | None = None,
    welcome_points: int = 0,
    card_no_prefix: str | None = None,
) -> Joined:
    """Enrol the WeChat user `openid` (of app `appid`) who consented in WeChat itself — e.g. by taking the
    merchant's member card there (`purpose` "wechat_card", the card's terms as `notice_version`) — or find the
    member holding that openid. The consent is recorded either way; a new member has no phone and no name until
    they give them, and gets the welcome points and a card number as any new member."""
    kind = openid_kind(appid)
    member_id = owner(session, kind, openid)
    created = member_id is None
    if member_id is None:
        member_id = create_member(session, now).id
        attach(session, member_id, kind, openid, now)
    return _consented(
        session, member_id, created, purpose, notice_version, store_id, now, welcome_points, card_no_prefix
    )


def _consented(
    session: Session,
    member_id: str,
    created: bool,
    purpose: str,
    notice_version: str | None,
    store_id: str | None,
    now: datetime,
    welcome_points: int,
    card_no_prefix: str | None,
) -> Joined:
    """Record the consent; a new member gets the welcome points (once) and a card number."""
    session.add(
        MemberConsent(
            member_id=member_id, purpose=purpose, notice_version=notice_version, store_id=store_id, given_at=now
        )
    )
    given = 0
    if created and card_no_prefix:
        attach(session, member_id, "card_no", _free_card_no(session, card_no_prefix), now)
    if created and welcome_points:
        session.execute(
            sa.insert(LedgerEntry.__table__).values(
                member_id=member_id,
                kind="welcome",
                points=welcome_points,
                transaction_id=f"welcome:{member_id}",
                store_id=store_id,
                created_at=now,
            )
        )
        feed.touch(session, member_id)
        given = welcome_points
    return Joined(member_id, created, given)


def _free_card_no(session: Session, prefix: str) -> str:
    """A 13-digit card number: the prefix, random digits, and a Luhn check digit (a typo is caught at the till)."""
    while True:
        body = prefix + "".join(secrets.choice("0123456789") for _ in range(12 - len(prefix)))
        number = body + _luhn_digit(body)
        if owner(session, "card_no", number) is None:
            return number


def _luhn_digit(body: str) -> str:
    total = 0
    for i, digit in enumerate(reversed(body)):
        d = int(digit) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return str((10 - total % 10) % 10)


def enrol(session: Session, request: contract.EnrolRequest, phone_hash_key: bytes, now: datetime) -> tuple[str, bool]:
    """Enrol a customer, or find the member they already are. Returns (member id, created)."""
    if not request.consent:
        raise Invalid("the customer must consent to membership (consent: true)", code="consent_required")
    if (request.phone is None) == (request.phone_hash is None):
        raise Invalid("give exactly one of phone or phone_hash")
    if request.phone is not None:
        try:
            hashed, masked = phone_hash(phone_hash_key, request.phone), mask_phone(request.phone)
        except InvalidPhoneNumber as exc:
            raise Invalid(f"phone: {exc}", code="invalid_phone") from None
    else:
        hashed, masked = request.phone_hash, request.phone_masked

    wanted: list[tuple[str, str]] = [("phone_hash", hashed)]
    if request.unionid:
        wanted.append(("unionid", request.unionid))
    if request.openid:
        wanted.append((openid_kind(request.openid.appid), request.openid.openid))
        if request.unionid:
            link_openid(session, request.openid.appid, request.openid.openid, request.unionid, now)

    # The UnionID is the strongest identity: its holder is the member; then the phone, then the openid.
    by_kind = {kind: owner(session, kind, value) for kind, value in wanted}
    member_id = by_kind.get("unionid") or by_kind["phone_hash"] or next((h for h in by_kind.values() if h), None)
    created = member_id is None
    if created:
        member_id = create_member(session, now, display_name=mask_name(request.name or ""), phone_masked=masked).id
    elif request.unionid and by_kind["phone_hash"] not in (None, member_id):
        # The phone's member and the UnionID's member are one customer.
        merge(session, member_id, by_kind["phone_hash"], now)
    for kind, value in wanted:
        attach(session, member_id, kind, value, now)
    member = session.get(Member, member_id)
    if not created and (not member.phone_masked or not member.display_name):
        member.phone_masked = member.phone_masked or masked
        member.display_name = member.display_name or mask_name(request.name or "")
        feed.touch(session, member_id)
    return member_id, created
