"""The local API's OpenAPI document: the one checked into docs/ is the one the agent serves, every /v1 operation
declares the station's token, its answer's model and the errors it may give (as `ErrorBody`), and real answers
of a whole store (tests/checkout_stack.py) — a sale, its refund, their refusals — are what the document says, so a
POS integrator's client generated from it reads them.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import httpx
import schemathesis

from agent.checkout_api import Session, Transaction
from agent.journal import JournalRecord
from agent.sale import CodePayment, PricingView, Sale, SaleLine, SaleMember
from tests.checkout_stack import Stack

DOC = Path(__file__).resolve().parents[2] / "docs" / "agent-openapi.json"
REGENERATE = "regenerate it with: .venv/bin/pos-edge openapi --output docs/agent-openapi.json"
# Answers that are not JSON: event streams and a receipt's picture.
NOT_JSON = {"text/event-stream", "image/png"}


def document() -> dict:
    return json.loads(DOC.read_text(encoding="utf-8"))


def test_every_v1_operation_declares_the_token_its_answer_and_its_errors():
    doc = document()
    schemes = doc["components"]["securitySchemes"]
    assert schemes["StationToken"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schemes["StationToken"]["description"],
    }
    operations = [(path, method, op) for path, ops in doc["paths"].items() for method, op in ops.items()]
    assert len([path for path, _, _ in operations if path.startswith("/v1/")]) >= 29
    for path, method, op in operations:
        where = f"{method.upper()} {path}"
        if not path.startswith("/v1/"):
            assert "security" not in op, where  # /healthz is open
            continue
        assert {"StationToken": []} in op["security"], where
        ok = next(status for status in op["responses"] if status.startswith("2"))
        content = op["responses"][ok]["content"]
        if not NOT_JSON & set(content):
            schema = content["application/json"]["schema"]
            named = schema.get("$ref") or schema.get("items", {}).get("$ref")
            assert named, f"{where}: its answer has no model ({schema})"
        for status in ("401", "422", "500"):
            error = op["responses"][status]["content"]["application/json"]["schema"]
            assert error == {"$ref": "#/components/schemas/ErrorBody"}, (where, status)
        if NOT_JSON & set(content) and method == "get":  # a browser opens these: the token may ride in the URL
            assert {"StationTokenInQuery": []} in op["security"], where
    body = doc["components"]["schemas"]["ErrorBody"]
    assert set(body["required"]) == {"error", "message", "message_zh"}
    assert {"error", "message", "message_zh", "details"} <= set(body["properties"])
    assert {"Session", "Transaction", "Status"} <= set(doc["components"]["schemas"])


def test_the_session_and_transaction_models_show_every_field_of_the_views_they_describe():
    """A response model drops what it does not name: a field added to the sale's view must be added here too."""
    now = datetime(2026, 11, 23, 2, 30, tzinfo=UTC)
    sale = Sale(
        id="S",
        station_id="T01",
        created_at=now,
        member=SaleMember(id="M", display_name="王*明", tier="gold", points=10, via="card", may_redeem=False),
        lines=[SaleLine(sku="1", name="水", qty=1, unit_price_fen=200, amount_fen=200)],
        pricing=PricingView(
            subtotal_fen=200,
            tier_discount_fen=0,
            coupon_discount_fen=0,
            discount_fen=0,
            points_redeemed=0,
            points_value_fen=0,
            amount_due_fen=200,
            points_earned=2,
        ),
        payments=[CodePayment(out_trade_no="o", provider="wechat", state="USERPAYING", amount_fen=200, created_at=now)],
    )
    view = sale.view()
    assert set(Session.model_fields) == set(view)
    assert Session.model_validate(view).model_dump(mode="json") == view  # shown as it was, field for field

    record = JournalRecord(
        seq=1,
        id="S",
        station_id="T01",
        kind="sale",
        business_day=now.date(),
        created_at=now,
        member_id=None,
        total_fen=200,
        points_earned=0,
        points_redeemed=0,
        body={"receipt_no": "T0126112300001", "lines": []},
        prev_hash="0" * 64,
        hash="1" * 64,
    )
    transaction = record.view()
    assert set(Transaction.model_fields) == set(transaction)
    assert Transaction.model_validate(transaction).model_dump(mode="json") == transaction


def test_the_checked_in_document_is_served_and_a_sale_and_its_refusals_answer_as_it_says(stack: Stack):
    served = httpx.get(f"{stack.url}/openapi.json", timeout=10).json()
    assert served == document(), f"docs/agent-openapi.json is out of date; {REGENERATE}"
    schema = schemathesis.openapi.from_dict(served)
    api = stack.api

    def answers(method: str, path: str, response: httpx.Response) -> dict:
        """The answer is one the document gives this operation, in the schema it gives it."""
        documented = served["paths"][path][method.lower()]["responses"]
        assert str(response.status_code) in documented, (method, path, response.status_code, response.text)
        schema[path][method].validate_response(response)
        return response.json()

    opened = answers("POST", "/v1/sessions", api.post("/v1/sessions", json={}))
    sid = opened["id"]
    refused = answers("POST", "/v1/sessions", api.post("/v1/sessions", json={}))
    assert refused["error"] == "sale_open" and refused["session_id"] == sid
    path = "/v1/sessions/{session_id}"
    answers("GET", "/v1/sessions/current", api.get("/v1/sessions/current"))
    answers("GET", path, api.get("/v1/sessions/nope"))  # 404 not_found
    basket = {"lines": [{"sku": "6901234567892", "name": "矿泉水 550ml", "qty": 2, "unit_price_fen": 200}]}
    answers("PUT", f"{path}/basket", api.put(f"/v1/sessions/{sid}/basket", json=basket))
    answers("PUT", f"{path}/basket", api.put(f"/v1/sessions/{sid}/basket", json={"lines": []}))  # 400 bad_basket
    answers("POST", f"{path}/phone", api.post(f"/v1/sessions/{sid}/phone", json={"phone": "1"}))  # 422 invalid_phone
    answers("POST", f"{path}/codes", api.post(f"/v1/sessions/{sid}/codes", json={"text": "?!"}))  # 422 unknown_code
    answers("POST", f"{path}/payment/cancel", api.post(f"/v1/sessions/{sid}/payment/cancel"))  # 409 not_now
    answers("PUT", f"{path}/redemption", api.put(f"/v1/sessions/{sid}/redemption", json={"points": "x"}))  # 422
    paid = answers("POST", f"{path}/tenders", api.post(f"/v1/sessions/{sid}/tenders", json={"kind": "cash"}))
    assert paid["state"] == "closed" and paid["transaction_id"] == sid
    answers("POST", f"{path}/cancel", api.post(f"/v1/sessions/{sid}/cancel"))  # 409 not_now: it is closed

    receipt = paid["receipt_no"]
    answers("GET", "/v1/transactions", api.get("/v1/transactions"))
    answers("GET", "/v1/transactions/{reference}", api.get(f"/v1/transactions/{receipt}"))
    answers("POST", "/v1/transactions/{reference}/reprint", api.post(f"/v1/transactions/{receipt}/reprint"))
    refund = answers(
        "POST", "/v1/refunds", api.post("/v1/refunds", json={"transaction": receipt, "reason": "顾客退货"})
    )
    assert refund["kind"] == "refund" and refund["total_fen"] == 400
    again = answers("POST", "/v1/refunds", api.post("/v1/refunds", json={"transaction": receipt, "reason": "顾客退货"}))
    assert again["error"] == "refund_refused"
    detail = answers("GET", "/v1/transactions/{reference}", api.get(f"/v1/transactions/{sid}"))
    assert [r["id"] for r in detail["refunds"]] == [refund["id"]]

    answers("GET", "/v1/members/lookup", api.get("/v1/members/lookup", params={"card_no": "8800000000000"}))
    answers("GET", "/v1/members/lookup", api.get("/v1/members/lookup"))  # 422 invalid_request
    answers("GET", "/v1/status", api.get("/v1/status"))
    answers("GET", "/v1/sync", api.get("/v1/sync"))
    answers("POST", "/v1/sync", api.post("/v1/sync"))
    answers("GET", "/v1/devices", api.get("/v1/devices"))
    answers("POST", "/v1/devices/{device_id}/scan", api.post("/v1/devices/scanner-1/scan", json={"text": "G00012"}))
    answers("POST", "/v1/devices/{device_id}/scan", api.post("/v1/devices/nope/scan", json={"text": "1"}))  # 404
    answers("GET", "/v1/scans", api.get("/v1/scans"))
    answers("GET", "/v1/printer", api.get("/v1/printer"))
    jobs = answers("GET", "/v1/printer/jobs", api.get("/v1/printer/jobs"))
    answers("POST", "/v1/printer/jobs/{job_id}/{action}", api.post(f"/v1/printer/jobs/{jobs[0]['id']}/release"))
    answers("GET", "/v1/status", httpx.get(f"{stack.url}/v1/status", timeout=10))  # 401 unauthorized
