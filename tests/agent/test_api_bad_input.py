"""Bad input to the local API gets a clear 4xx in the API's error shape, never a 500, and changes nothing.

Python's JSON parser reads `NaN`, `Infinity` and `1e999` (a float too large: infinity), so such a body reaches
validation; the answer must still be strict JSON. A query number beyond SQLite's 64-bit integers must be
refused before it reaches the database. Over real HTTP against a whole store (tests/checkout_stack.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.checkout_stack import Stack

NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(Path(tmp_path_factory.mktemp("bad-input"))).start()
    yield stack
    stack.close()


@pytest.fixture(scope="module")
def sale(store: Stack) -> dict:
    """An open sale with one line in the basket."""
    session = store.open_session()
    basket = {"lines": [{"sku": "6901234567892", "name": "矿泉水 550ml", "qty": 2, "unit_price_fen": 200}]}
    answer = store.api.put(f"/v1/sessions/{session['id']}/basket", json=basket)
    assert answer.status_code == 200, answer.text
    return answer.json()


def strict_json(answer: httpx.Response) -> dict:
    """The body, refusing NaN/Infinity as a strict JSON reader (a browser, a POS in another language) would."""

    def refuse(token: str) -> None:
        raise AssertionError(f"the answer holds {token}, which is not JSON: {answer.text[:200]}")

    return json.loads(answer.text, parse_constant=refuse)


def bodies(sale_id: str) -> list[tuple[str, str, str, str]]:
    """(method, path, raw body with {n} where a number goes, the field the answer must name)."""
    return [
        (
            "PUT",
            f"/v1/sessions/{sale_id}/basket",
            '{"lines": [{"sku": "1", "name": "x", "qty": {n}, "unit_price_fen": 100}]}',
            "lines.0.qty",
        ),
        (
            "PUT",
            f"/v1/sessions/{sale_id}/basket",
            '{"lines": [{"sku": "1", "name": "x", "qty": 1, "unit_price_fen": {n}}]}',
            "unit_price_fen",
        ),
        ("PUT", f"/v1/sessions/{sale_id}/redemption", '{"points": {n}}', "points"),
        ("POST", f"/v1/sessions/{sale_id}/tenders", '{"kind": "cash", "tendered_fen": {n}}', "tendered_fen"),
        (
            "POST",
            f"/v1/sessions/{sale_id}/tenders",
            '{"kind": "card", "amount_fen": {n}, "reference": "T1"}',
            "amount_fen",
        ),
        ("POST", f"/v1/sessions/{sale_id}/codes", '{"text": {n}}', "text"),
        ("POST", f"/v1/sessions/{sale_id}/phone", '{"phone": "13812345678", "confirmed": {n}}', "confirmed"),
        ("POST", "/v1/refunds", '{"transaction": "x", "lines": [{"line": {n}, "qty": 1}]}', "lines.0.line"),
        ("POST", "/v1/devices/scanner-1/scan", '{"text": {n}}', "text"),
    ]


@pytest.mark.parametrize("number", NON_FINITE)
def test_a_body_with_a_non_finite_number_is_422_naming_the_field_and_the_sale_is_unchanged(
    store: Stack, sale: dict, number: str
):
    for method, path, template, field in bodies(sale["id"]):
        raw = template.replace("{n}", number)
        answer = store.api.request(method, path, content=raw, headers={"Content-Type": "application/json"})
        assert answer.status_code == 422, f"{method} {path} {raw}: {answer.status_code} {answer.text[:300]}"
        body = strict_json(answer)
        assert body["error"] == "invalid_request" and field in body["message"], (raw, body)
        assert all("input" not in detail for detail in body["details"])  # the input is never echoed
    after = store.session(sale["id"])
    assert after["state"] == sale["state"] and after["lines"] == sale["lines"] and after["tenders"] == []
    assert after["pricing"] == sale["pricing"]


def test_a_malformed_body_is_422_not_500(store: Stack, sale: dict):
    for raw in ['{"points": 1', '{"points": 1}}', "\xff\xfe", "[]", '"points"', "null"]:
        answer = store.api.put(
            f"/v1/sessions/{sale['id']}/redemption",
            content=raw.encode("latin-1"),
            headers={"Content-Type": "application/json"},
        )
        assert answer.status_code == 422, (raw, answer.text)
        assert strict_json(answer)["error"] == "invalid_request"


@pytest.mark.parametrize("before", ["9223372036854775808", "-9223372036854775809", "1" + "0" * 40, "0", "-1"])
def test_transactions_before_out_of_range_is_422_naming_it(store: Stack, before: str):
    answer = store.api.get("/v1/transactions", params={"before": before})
    assert answer.status_code == 422, answer.text
    body = strict_json(answer)
    assert body["error"] == "invalid_request" and body["message"].startswith("query.before:")


def test_transactions_before_the_largest_seq_still_pages(store: Stack, sale: dict):
    paid = store.api.post(f"/v1/sessions/{sale['id']}/tenders", json={"kind": "cash"}).json()
    assert paid["state"] == "closed", paid
    newest = store.api.get("/v1/transactions", params={"before": str(2**63 - 1)})
    assert newest.status_code == 200 and newest.json()[0]["id"] == paid["transaction_id"]
    first = store.api.get("/v1/transactions", params={"before": "1"})
    assert first.status_code == 200 and first.json() == []
