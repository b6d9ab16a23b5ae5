"""Members: lookup by any identifier, enrolment that cannot enrol twice, identity linking and merging."""

from __future__ import annotations

import uuid

import pytest
from sqlmodel import select

from agent.pii import phone_hash as agent_phone_hash
from central import contract
from central.models import MemberConsent
from tests.support.credentials import PHONE_KEY

MINI = "openid:wx5f3c9a1e7b2d4068"


@pytest.fixture
def store(central):
    return central.add_store("S1")


def enrol(client, body: dict, key: str | None = None):
    return client.post("/v1/members", json=body, headers={"Idempotency-Key": key or str(uuid.uuid4())})


def test_lookup_by_each_identifier(central, store):
    member = central.add_member(
        points=420,
        tier="gold",
        phone="13812345678",
        identifiers={"card_no": "8800000000017", "unionid": "oUNION_wang", MINI: "oMINI_wang"},
    )
    queries = [
        {"card_no": "8800000000017"},
        {"unionid": "oUNION_wang"},
        {"phone_hash": agent_phone_hash(PHONE_KEY.encode(), "138 1234 5678")},  # the agent's hash finds it
        {"appid": "wx5f3c9a1e7b2d4068", "openid": "oMINI_wang"},
    ]
    with central.client(store) as client:
        for params in queries:
            answer = client.get("/v1/members/lookup", params=params)
            assert answer.status_code == 200, params
            found = contract.MemberLookup.model_validate(answer.json()).member
            assert (found.member_id, found.points, found.tier, found.phone_masked) == (
                member,
                420,
                "gold",
                "138****5678",
            )
            assert {(i.kind, i.value) for i in found.identifiers} >= {
                ("card_no", "8800000000017"),
                ("unionid", "oUNION_wang"),
            }
        missing = client.get("/v1/members/lookup", params={"card_no": "8800999999999"})
        assert missing.status_code == 404 and missing.json()["error"] == "not_found"
        for params in ({}, {"card_no": "1", "unionid": "2"}, {"openid": "oMINI_wang"}, {"phone_hash": "not-hex"}):
            assert client.get("/v1/members/lookup", params=params).status_code == 422, params


def test_enrolment_is_idempotent_by_key(central, store):
    body = {"phone": "139 0000 1234", "consent": True, "name": "李小龙"}
    with central.client(store) as client:
        first = enrol(client, body, "kiosk-1-0001")
        assert first.status_code == 201
        created = contract.EnrolResult.model_validate(first.json())
        assert (
            created.created and created.member.display_name == "李*龙" and created.member.phone_masked == "139****1234"
        )
        assert created.member.identifiers == [
            contract.Identifier(kind="phone_hash", value=agent_phone_hash(PHONE_KEY.encode(), "13900001234"))
        ]

        replay = enrol(client, body, "kiosk-1-0001")
        assert replay.status_code == 201 and replay.json() == first.json()
        assert replay.headers["idempotent-replayed"] == "true"

        reused = enrol(client, {**body, "name": "别人"}, "kiosk-1-0001")
        assert reused.status_code == 409 and reused.json()["error"] == "idempotency_key_reused"

        # A new key for the same phone finds the member instead of enrolling a second one.
        again = enrol(client, body, "kiosk-1-0002")
        assert again.status_code == 200 and again.json()["created"] is False
        assert again.json()["member"]["member_id"] == created.member.member_id

        missing_key = client.post("/v1/members", json=body)
        assert missing_key.status_code == 400 and missing_key.json()["error"] == "idempotency_key_missing"
        changes = client.get("/v1/members/changes").json()["changes"]
    assert [c["member_id"] for c in changes] == [created.member.member_id]


def test_a_store_key_is_its_own(central, store):
    other = central.add_store("S2")
    body = {"phone": "13900001234", "consent": True}
    with central.client(store) as one, central.client(other) as two:
        assert enrol(one, body, "same-key-123").status_code == 201
        assert enrol(two, {**body, "phone": "13900005678"}, "same-key-123").status_code == 201


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"phone": "13900001234", "consent": False}, "consent_required"),
        ({"phone": "12345", "consent": True}, "invalid_phone"),
        ({"phone": "+14155550123", "consent": True}, "invalid_phone"),
        ({"consent": True}, "invalid"),
        ({"phone": "13900001234", "phone_hash": "0" * 64, "consent": True}, "invalid"),
        ({"phone": "13900001234", "consent": "yes"}, "invalid"),
    ],
)
def test_enrolment_refuses_what_it_cannot_use(central, store, body, code):
    with central.client(store) as client:
        answer = enrol(client, body)
    assert answer.status_code == 422 and answer.json()["error"] == code, answer.text


def test_enrolment_with_a_phone_hash(central, store):
    hashed = agent_phone_hash(PHONE_KEY.encode(), "13700001111")
    with central.client(store) as client:
        answer = enrol(client, {"phone_hash": hashed, "phone_masked": "137****1111", "consent": True})
    assert answer.status_code == 201 and answer.json()["member"]["phone_masked"] == "137****1111"


def test_an_openid_with_a_known_unionid_joins_that_member(central, store):
    member = central.add_member(identifiers={"unionid": "oUNION_li"})
    body = {
        "phone": "13600002222",
        "consent": True,
        "unionid": "oUNION_li",
        "openid": {"appid": "wx5f3c9a1e7b2d4068", "openid": "oMINI_li"},
    }
    with central.client(store) as client:
        answer = enrol(client, body)
        assert answer.status_code == 200 and answer.json()["member"]["member_id"] == member
        found = client.get("/v1/members/lookup", params={"appid": "wx5f3c9a1e7b2d4068", "openid": "oMINI_li"}).json()[
            "member"
        ]
    assert found["member_id"] == member
    assert {(i["kind"], i["value"]) for i in found["identifiers"]} >= {(MINI, "oMINI_li"), ("unionid", "oUNION_li")}


def test_two_members_sharing_a_unionid_are_merged(central, store):
    """A customer known by the mini program (unionid) and, separately, by a CRM card and phone enrols at the
    kiosk with both: one member survives with everything; the other is a tombstone pointing at it."""
    holder = central.add_member(points=300, tier="silver", identifiers={"unionid": "oUNION_zhao", MINI: "oMINI_zhao"})
    carded = central.add_member(points=200, tier="gold", phone="13500003333", identifiers={"card_no": "8800000000025"})
    body = {"phone": "13500003333", "consent": True, "unionid": "oUNION_zhao"}
    with central.client(store) as client:
        answer = enrol(client, body)
        assert answer.status_code == 200
        survivor = contract.EnrolResult.model_validate(answer.json()).member
        assert survivor.member_id == holder and survivor.points == 500 and survivor.tier == "gold"
        assert {i.kind for i in survivor.identifiers} == {"unionid", MINI, "card_no", "phone_hash"}
        card = client.get("/v1/members/lookup", params={"card_no": "8800000000025"}).json()["member"]
        assert card["member_id"] == holder
        feed = client.get("/v1/members/changes").json()["changes"]
    latest = {c["member_id"]: c for c in feed}
    assert latest[carded]["deleted"] is True and latest[carded]["merged_into"] == holder
    assert latest[carded]["version"] < latest[holder]["version"]  # the tombstone before the survivor's new state


def test_joining_records_the_consent_gives_welcome_points_once_and_a_card_number(central_factory):
    central = central_factory(welcome_points=100, card_no_prefix="8800")
    store = central.add_store("S1")
    body = {"phone": "13900004321", "consent": True, "notice_version": "2026-11"}
    with central.client(store) as client:
        joined = enrol(client, body)
        again = enrol(client, body)  # the same customer joins again at another visit
    assert joined.status_code == 201 and again.status_code == 200
    first, second = (
        contract.EnrolResult.model_validate(joined.json()),
        contract.EnrolResult.model_validate(again.json()),
    )
    assert first.welcome_points == 100 and first.member.points == 100
    assert second.welcome_points == 0 and second.member.points == 100  # booked once
    [card_no] = [i.value for i in first.member.identifiers if i.kind == "card_no"]
    assert card_no.startswith("8800") and len(card_no) == 13 and luhn_ok(card_no)
    with central.session() as session:
        consents = session.exec(select(MemberConsent).order_by(MemberConsent.id)).all()
    assert [(c.member_id, c.notice_version, c.store_id) for c in consents] == [
        (first.member.member_id, "2026-11", "S1")
    ] * 2


def luhn_ok(number: str) -> bool:
    total = 0
    for i, digit in enumerate(reversed(number)):
        d = int(digit) * (2 if i % 2 == 1 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0
