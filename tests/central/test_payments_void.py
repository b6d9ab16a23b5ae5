"""Giving up a payment whose request may still be on its way (`POST /v1/payments/{otn}/void`): central records the
give-up even when it has never seen the number, and a late copy of the charge is then refused, never charged."""

from __future__ import annotations

from tests.central.test_payments import code, follow, new_otn, pay, paying, sim  # noqa: F401 - fixtures

VOID = {"provider": "wechat", "amount_fen": 1234, "station_id": "T01"}


def test_a_number_central_never_saw_is_voided_and_its_late_charge_refused(paying, sim):
    server, client = paying
    otn = new_otn()
    voided = client.post(f"/v1/payments/{otn}/void", json=VOID)
    assert voided.status_code == 200
    assert voided.json()["state"] == "FAILED" and voided.json()["code"] == "VOIDED" and voided.json()["final"]

    late = pay(client, code("00"), out_trade_no=otn)  # the request the till lost the answer to arrives after all
    assert late.status_code == 409 and late.json()["error"] == "payment_voided"
    assert sim.count("micropay") == 0  # the customer is never charged
    assert client.get(f"/v1/payments/{otn}").json()["state"] == "FAILED"


def test_voiding_twice_answers_the_same(paying, sim):
    server, client = paying
    otn = new_otn()
    first = client.post(f"/v1/payments/{otn}/void", json=VOID).json()
    again = client.post(f"/v1/payments/{otn}/void", json=VOID).json()
    assert (again["state"], again["code"], again["created_at"]) == (first["state"], first["code"], first["created_at"])


def test_a_paid_payment_voided_is_reversed(paying, sim):
    server, client = paying
    otn = new_otn()
    assert pay(client, code("00"), out_trade_no=otn).json()["state"] == "SUCCESS"
    answer = client.post(f"/v1/payments/{otn}/void", json=VOID).json()
    assert answer["state"] in ("REVERSING", "REVERSED") and not answer["paid"]
    assert follow(client, otn, until=("REVERSED",))["state"] == "REVERSED"
    assert sim.count("reverse") >= 1


def test_a_void_of_another_stores_number_is_not_found(paying, sim):
    server, client = paying
    otn = new_otn()
    assert pay(client, code("00"), out_trade_no=otn).json()["state"] == "SUCCESS"
    other = server.add_store("S2")
    with server.client(other) as theirs:
        assert theirs.post(f"/v1/payments/{otn}/void", json=VOID).status_code == 404
    assert client.get(f"/v1/payments/{otn}").json()["state"] == "SUCCESS"


def test_a_void_with_a_bad_body_is_refused_clearly(paying, sim):
    server, client = paying
    answer = client.post(
        f"/v1/payments/{new_otn()}/void", json={"provider": "wechat", "amount_fen": 0, "station_id": "T01"}
    )
    assert answer.status_code == 422
