"""Demo data: realistic members for `make demo`, tests and benchmarks, the same every time for a given seed.

Member n is drawn from its own random stream (seed, n), so a run with more members adds members and never
changes the ones already there, and running again adds nothing. Phones exist only as hash and mask.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa

from central import feed, stores
from central.clock import utcnow
from central.db import read_session, write_session
from central.identity import ID_ALPHABET, openid_kind
from central.models import Coupon, LedgerEntry, Member, MemberIdentifier, Store
from central.payments.simulators.wechat import customer_openid
from central.pii import InvalidPhoneNumber, hash_e164, mask_e164, mask_name, normalize_cn_mobile

# Public demo values: the demo agent (config/demo.toml, Makefile) uses the same.
DEMO_STORE_ID = "DEMO01"
DEMO_STORE_TOKEN = "demo-store-token"
MINI_PROGRAM_APPID = "wx5f3c9a1e7b2d4068"
OFFICIAL_ACCOUNT_APPID = "wx9b1d7e3a5c2f8046"
CARD_PREFIX = "8800"

SURNAMES = (
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈姚卢姜崔钟谭陆汪范"
    "金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤"
)
COMPOUND_SURNAMES = ("欧阳", "司马", "上官", "诸葛", "东方")
GIVEN_CHARS = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超兰霞平刚桂华玉萍红玲芬燕彬晨晓宇浩然涵欣怡轩诺桐思远嘉俊佳琪文博婷雪鹏辉建国海峰志"
MOBILE_PREFIXES = (
    "134",
    "135",
    "136",
    "137",
    "138",
    "139",
    "150",
    "151",
    "152",
    "157",
    "158",
    "159",
    "182",
    "187",
    "188",
    "130",
    "131",
    "132",
    "155",
    "156",
    "185",
    "186",
    "133",
    "153",
    "180",
    "181",
    "189",
    "177",
    "199",
)
TIERS = (("normal", 60), ("silver", 25), ("gold", 12), ("platinum", 3))
TIER_POINTS = {"normal": 800, "silver": 3000, "gold": 8000, "platinum": 20000}
WECHAT_ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
COUPON_CHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
COUPONS = (
    # title, kind, amount_off_fen, percent_off, threshold_fen, cap_fen, usable_offline
    ("满100减10", "amount_off", 1000, 0, 10000, None, True),
    ("满200减30", "amount_off", 3000, 0, 20000, None, False),
    ("无门槛5元券", "amount_off", 500, 0, 0, None, True),
    ("9折券 最高减20元", "percent_off", 0, 10, 0, 2000, False),
    ("会员日95折", "percent_off", 0, 5, 5000, 5000, True),
)
CHUNK = 1000


@dataclass
class DemoMember:
    id: str
    tier: str
    display_name: str
    phone_masked: str | None
    points: int
    identifiers: list[tuple[str, str]] = field(default_factory=list)
    coupons: list[dict] = field(default_factory=list)
    phone: str | None = None  # E.164, for the demo's banner only: central stores the keyed hash and the mask

    def card_no(self) -> str | None:
        return next((value for kind, value in self.identifiers if kind == "card_no"), None)


@dataclass(frozen=True)
class SeedReport:
    members_added: int
    members_total: int
    store_added: bool


# Members 1-9 pay with the WeChat Pay simulator's customers 0001-0009 (`13 0001 ...` auth codes), so the demo
# shows pay-as-member with one scan.
DEMO_PAYERS = 9


def demo_member(seed: int, n: int, phone_key: bytes, today: datetime, payer_appid: str | None = None) -> DemoMember:
    """Member number `n` (1-based) of the demo population for `seed`."""
    rng = random.Random(f"pos-central demo {seed} {n}")
    member_id = "M" + "".join(rng.choices(ID_ALPHABET, k=11))
    tier = rng.choices([t for t, _ in TIERS], weights=[w for _, w in TIERS])[0]
    surname = rng.choice(COMPOUND_SURNAMES) if rng.random() < 0.02 else rng.choice(SURNAMES)
    name = surname + "".join(rng.choices(GIVEN_CHARS, k=rng.choice((1, 2, 2))))
    member = DemoMember(member_id, tier, mask_name(name), None, rng.randint(0, TIER_POINTS[tier]))

    if rng.random() < 0.95:
        e164 = _mobile(rng)
        member.phone_masked, member.phone = mask_e164(e164), e164
        member.identifiers.append(("phone_hash", hash_e164(phone_key, e164)))
    if rng.random() < 0.7:
        # Unique per n without a lookup: multiplying by a number prime to 10**9 permutes 0..10**9-1.
        member.identifiers.append(("card_no", f"{CARD_PREFIX}{(n * 387420489 + 20250101) % 10**9:09d}"))
    has_unionid = rng.random() < 0.8
    if has_unionid:
        member.identifiers.append(("unionid", _wechat_id(rng)))
    if rng.random() < (0.9 if has_unionid else 0.3):
        member.identifiers.append((openid_kind(MINI_PROGRAM_APPID), _wechat_id(rng)))
    if has_unionid and rng.random() < 0.5:
        member.identifiers.append((openid_kind(OFFICIAL_ACCOUNT_APPID), _wechat_id(rng)))

    if payer_appid is not None and n <= DEMO_PAYERS:
        kind = openid_kind(payer_appid)
        member.identifiers = [(k, v) for k, v in member.identifiers if k != kind]
        member.identifiers.append((kind, customer_openid(payer_appid, f"{n:04d}")))

    for _ in range(rng.choices((0, 1, 2), weights=(65, 25, 10))[0]):
        title, kind, amount, percent, threshold, cap, offline = rng.choice(COUPONS)
        valid_from = today - timedelta(days=rng.randint(0, 10))
        member.coupons.append(
            dict(
                code="CP" + "".join(rng.choices(COUPON_CHARS, k=10)),
                member_id=member_id,
                title=title,
                kind=kind,
                amount_off_fen=amount,
                percent_off=percent,
                threshold_fen=threshold,
                cap_fen=cap,
                usable_offline=offline,
                valid_from=valid_from,
                valid_until=valid_from + timedelta(days=rng.choice((30, 60, 90))),
                used_at=None,
                used_in_transaction=None,
            )
        )
    return member


def _mobile(rng: random.Random) -> str:
    """A valid mainland mobile number, E.164."""
    while True:
        try:
            return normalize_cn_mobile(rng.choice(MOBILE_PREFIXES) + f"{rng.randrange(10**8):08d}")
        except InvalidPhoneNumber:
            continue


def _wechat_id(rng: random.Random) -> str:
    return "o" + "".join(rng.choices(WECHAT_ID_CHARS, k=27))


def seed_demo(
    engine: sa.Engine,
    phone_key: bytes,
    members: int,
    seed: int = 1,
    store_id: str = DEMO_STORE_ID,
    store_token: str = DEMO_STORE_TOKEN,
    now: datetime | None = None,
    payer_appid: str | None = None,
) -> SeedReport:
    """Add the demo store (if missing) and demo members 1..`members` that are not there yet. With `payer_appid`
    (the WeChat Pay appid central charges with), members 1-9 are the payment simulator's customers 0001-0009."""
    now = now or utcnow()
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    store_added = False
    with write_session(engine) as session:
        if session.get(Store, store_id) is None:
            stores.add_store(session, store_id, now, name="演示门店 Demo Store", token=store_token)
            session.commit()
            store_added = True
    added = 0
    for start in range(1, members + 1, CHUNK):
        batch = [
            demo_member(seed, n, phone_key, today, payer_appid) for n in range(start, min(start + CHUNK, members + 1))
        ]
        added += _insert(engine, batch, now)
    with read_session(engine) as session:
        total = session.execute(
            sa.select(sa.func.count()).select_from(Member).where(Member.deleted.is_(False))
        ).scalar_one()
    return SeedReport(members_added=added, members_total=total, store_added=store_added)


def _insert(engine: sa.Engine, batch: list[DemoMember], now: datetime) -> int:
    with write_session(engine) as session:
        feed.lock(session)
        members, idents = Member.__table__, MemberIdentifier.__table__
        present = set(session.execute(sa.select(members.c.id).where(members.c.id.in_([m.id for m in batch]))).scalars())
        batch = [m for m in batch if m.id not in present]
        if not batch:
            return 0
        wanted = [(kind, value) for m in batch for kind, value in m.identifiers]
        taken = {
            (kind, value)
            for kind, value in session.execute(
                sa.select(idents.c.kind, idents.c.value).where(idents.c.value.in_([value for _, value in wanted]))
            )
        }
        versions = feed.next_versions(session, len(batch))
        session.execute(
            sa.insert(members),
            [
                dict(
                    id=m.id,
                    tier=m.tier,
                    display_name=m.display_name,
                    phone_masked=m.phone_masked,
                    version=v,
                    deleted=False,
                    merged_into=None,
                    created_at=now,
                    updated_at=now,
                )
                for m, v in zip(batch, versions, strict=True)
            ],
        )
        rows = []
        for m in batch:
            for kind, value in m.identifiers:
                if (kind, value) not in taken:  # a phone drawn twice stays with its first member
                    taken.add((kind, value))
                    rows.append(dict(kind=kind, value=value, member_id=m.id, created_at=now))
        if rows:
            session.execute(sa.insert(idents), rows)
        ledger = [
            dict(
                member_id=m.id,
                kind="opening",
                points=m.points,
                transaction_id=f"seed:{m.id}",
                store_id=None,
                created_at=now,
            )
            for m in batch
            if m.points
        ]
        if ledger:
            session.execute(sa.insert(LedgerEntry.__table__), ledger)
        coupons = [c for m in batch for c in m.coupons]
        if coupons:
            session.execute(sa.insert(Coupon.__table__), coupons)
        session.commit()
        return len(batch)
