"""Store credentials: a token, stored hashed, that names one store; a store sees only its own data."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from central.models import Store
from central.stores import hash_token
from tests.central.rows import journal_row

ENDPOINTS = [
    ("GET", "/v1/members/changes", None),
    ("GET", "/v1/members/lookup?card_no=8800000000001", None),
    ("POST", "/v1/members", {"phone": "13812345678", "consent": True}),
    ("POST", "/v1/transactions:batch", {"transactions": []}),
    ("GET", "/v1/stores/S1/days/2026-11-23/summary", None),
    ("GET", "/v1/keys/member-code", None),
]


def test_every_endpoint_wants_a_valid_token_of_the_named_store(central):
    s1 = central.add_store("S1")
    central.add_store("S2")
    with central.client() as client:
        for method, path, body in ENDPOINTS:
            missing = client.request(method, path, json=body)
            assert missing.status_code == 401, path
            assert missing.headers["www-authenticate"] == "Bearer"
            assert missing.json()["error"] == "unauthorized"
            wrong = client.request(
                method, path, json=body, headers={"Authorization": "Bearer not-a-token", "X-Store-Id": "S1"}
            )
            assert wrong.status_code == 401, path
            other = client.request(method, path, json=body, headers={**s1.headers, "X-Store-Id": "S2"})
            assert other.status_code == 403, path
            assert other.json()["error"] == "forbidden"
            no_store = client.request(method, path, json=body, headers={"Authorization": s1.headers["Authorization"]})
            assert no_store.status_code == 400 and no_store.json()["error"] == "store_id_missing", path
        assert client.get("/healthz").json() == {"status": "ok"}  # liveness needs no credentials


def test_tokens_are_stored_hashed(central):
    creds = central.add_store("S1")
    with central.session() as session:
        stored = session.execute(sa.select(Store.token_hash)).scalar_one()
    assert stored == hash_token(creds.token) and creds.token not in stored


def test_a_store_cannot_read_or_write_another_stores_data(central):
    s1, s2 = central.add_store("S1"), central.add_store("S2")
    with central.client(s1) as one, central.client(s2) as two:
        row = journal_row(1234)
        assert (
            one.post("/v1/transactions:batch", json={"transactions": [row]}).json()["results"][0]["status"]
            == "accepted"
        )
        # S2's token cannot claim to be S1 ...
        assert (
            two.post("/v1/transactions:batch", json={"transactions": [row]}, headers={"X-Store-Id": "S1"}).status_code
            == 403
        )
        assert two.get("/v1/stores/S1/days/2026-11-23/summary").status_code == 403
        # ... and S1's transaction id sent by S2 is not S2's to confirm or overwrite.
        answer = two.post("/v1/transactions:batch", json={"transactions": [row]}).json()
        assert answer["results"][0] == {
            "id": row["id"],
            "status": "rejected",
            "reason": "other_store",
            "message": answer["results"][0]["message"],
        }
        assert two.get("/v1/stores/S2/days/2026-11-23/summary").json()["count"] == 0
        assert one.get("/v1/stores/S1/days/2026-11-23/summary").json()["count"] == 1


@pytest.mark.parametrize("header", ["Bearer", "Basic dXNlcjpwYXNz", "token-without-scheme"])
def test_malformed_authorization_is_401(central, header):
    central.add_store("S1")
    with central.client() as client:
        answer = client.get("/v1/keys/member-code", headers={"Authorization": header, "X-Store-Id": "S1"})
    assert answer.status_code == 401
