"""Linking what WeChat says about a user (an openid of one app, their UnionID) to central's members."""

from __future__ import annotations

import logging
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session

from central import identity
from central.models import MemberIdentifier

log = logging.getLogger(__name__)


def unionid_of(session: Session, member_id: str | None) -> str | None:
    if member_id is None:
        return None
    return session.execute(
        sa.select(MemberIdentifier.value).where(
            MemberIdentifier.member_id == member_id, MemberIdentifier.kind == "unionid"
        )
    ).scalar()


def link(session: Session, appid: str, openid: str, unionid: str | None, now: datetime) -> str | None:
    """The member holding the openid or the UnionID, with the other linked to them, or the two members merged
    (`identity.link_openid`); None when central knows neither. The caller holds the feed lock.

    WeChat gives a user one UnionID: when the openid's member already holds another, the data disagrees with
    itself somewhere (an import, a typo, demo data), and nothing is linked or merged on WeChat's word; a warning
    says so and the openid's member is answered."""
    if unionid is None:
        return identity.owner(session, identity.openid_kind(appid), openid)
    holder = identity.owner(session, identity.openid_kind(appid), openid)
    held = unionid_of(session, holder)
    if held is not None and held != unionid:
        log.warning(
            "member %s holds openid %s of %s with another UnionID than WeChat reports: not linked; check the member",
            holder,
            openid,
            appid,
        )
        return holder
    return identity.link_openid(session, appid, openid, unionid, now)
