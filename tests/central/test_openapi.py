"""The OpenAPI document checked into docs/ is the one the service serves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"


@pytest.mark.parametrize("central_database_url", ["sqlite"], indirect=True)
def test_checked_in_openapi_matches_the_served_one(central):
    with central.client() as client:
        served = client.get("/openapi.json").json()
    assert DOC.exists() and json.loads(DOC.read_text(encoding="utf-8")) == served, (
        "docs/openapi.json is out of date; regenerate it with: .venv/bin/pos-central openapi --output docs/openapi.json"
    )


@pytest.mark.parametrize("central_database_url", ["sqlite"], indirect=True)
def test_every_contract_path_is_served_under_v1(central):
    with central.client() as client:
        paths = set(client.get("/openapi.json").json()["paths"])
    assert paths == {
        "/v1/members/changes",
        "/v1/members/lookup",
        "/v1/members",
        "/v1/transactions:batch",
        "/v1/stores/{store_id}/days/{business_day}/summary",
        "/v1/keys/member-code",
        "/healthz",
        "/v1/payments",
        "/v1/payments/identify",
        "/v1/payments/{out_trade_no}",
        "/v1/payments/{out_trade_no}/reverse",
        "/v1/payments/{out_trade_no}/void",
        "/v1/payments/{out_trade_no}/refunds",
        "/v1/payments/{out_trade_no}/refunds/{out_refund_no}",
        "/v1/stores/{store_id}/days/{business_day}/payments",
    }
