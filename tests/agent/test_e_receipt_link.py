"""The e-receipt link in a sale receipt's QR code: central's page by default, with a token the till mints itself,
offline too; a settings file says clearly what it must hold."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from agent.journal import JournalRecord, canonical_json
from agent.sale_receipts import receipt_of_record
from agent.settings import Settings, load_settings
from central.e_receipt_token import read_token
from tests.agent.test_settings import MINIMAL, problems, write
from tests.support.credentials import PHONE_KEY, PHONE_KEY_BYTES

SALE_ID = "01a22a37-e87a-752a-9573-63fe81541a02"
SALE_BODY = {
    "receipt_no": "T012611300001",
    "online": False,
    "guide_id": None,
    "lines": [
        {
            "sku": "6901234567892",
            "name": "矿泉水 550ml",
            "qty": 1,
            "unit_price_fen": 200,
            "category": "",
            "amount_fen": 200,
            "earns_points": True,
        }
    ],
    "tenders": [{"kind": "cash", "amount_fen": 200, "tendered_fen": 200, "change_fen": 0}],
    "coupons": [],
    "subtotal_fen": 200,
    "tier_discount_fen": 0,
    "discount_fen": 0,
    "points_value_fen": 0,
    "member": None,
    "points_balance": None,
}
VOID_BODY = {
    "lines": SALE_BODY["lines"],
    "tenders": SALE_BODY["tenders"],
    "coupons": [],
    "reason": "顾客不要了",
    "online": True,
}


def record(kind: str, body: dict) -> JournalRecord:
    return JournalRecord(
        seq=1,
        id=SALE_ID,
        station_id="T01",
        kind=kind,
        business_day=date(2026, 11, 30),
        created_at=datetime(2026, 11, 30, 2, 10, tzinfo=UTC),
        member_id=None,
        total_fen=200,
        points_earned=0,
        points_redeemed=0,
        body=json.loads(canonical_json(body)),
        prev_hash="0" * 64,
        hash="0" * 64,
    )


def settings(tmp_path: Path, receipt: str = "", key: str | None = PHONE_KEY) -> Settings:
    text = MINIMAL + receipt + (f'\n[privacy]\nphone_hash_key = "{key}"\n' if key else "")
    return load_settings(write(tmp_path, text)).settings


def test_a_sale_receipt_links_to_central_s_page_with_a_token_central_reads_back(tmp_path):
    url = receipt_of_record(record("sale", SALE_BODY), settings(tmp_path)).e_receipt_url
    assert url is not None and url.startswith("https://central.example.com/e/")
    token = url.removeprefix("https://central.example.com/e/")
    assert read_token(PHONE_KEY_BYTES, token) == (SALE_ID, True)  # what central will find, once it has the sale
    assert SALE_ID not in url


def test_a_template_of_the_store_s_own_takes_the_token(tmp_path):
    custom = settings(tmp_path, '\n[receipt]\ne_receipt_url = "https://r.example.com/receipt?t={token}"\n')
    url = receipt_of_record(record("sale", SALE_BODY), custom).e_receipt_url
    assert url is not None and url.startswith("https://r.example.com/receipt?t=") and len(url) == 32 + 32


def test_without_the_phone_hash_key_no_token_can_be_minted_so_no_qr_code(tmp_path):
    assert receipt_of_record(record("sale", SALE_BODY), settings(tmp_path, key=None)).e_receipt_url is None


def test_only_a_sale_has_an_e_receipt(tmp_path):
    assert receipt_of_record(record("void", VOID_BODY), settings(tmp_path)).e_receipt_url is None


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("https://r.example.com/e/", "must contain {token}"),
        ("https://r.example.com/e/{token}/{transaction_id}", "use {token} alone"),
        ("r.example.com/e/{token}", "must be an http(s) URL"),
    ],
)
def test_a_bad_template_is_refused_with_the_key_and_the_fix(tmp_path, template, expected):
    (found,) = problems(tmp_path, MINIMAL + f'\n[receipt]\ne_receipt_url = "{template}"\n')
    assert found.startswith("receipt.e_receipt_url: ") and expected in found
    assert 'e_receipt_url = "https://central.example.com/e/{token}"' in found  # the example shown


def test_an_older_template_with_the_id_still_loads_but_is_warned_about(tmp_path):
    loaded = load_settings(
        write(tmp_path, MINIMAL + '\n[receipt]\ne_receipt_url = "https://r.example.com/e/{transaction_id}"\n')
    )
    assert any("receipt.e_receipt_url" in warning and "{token}" in warning for warning in loaded.warnings)
    url = receipt_of_record(record("sale", SALE_BODY), loaded.settings).e_receipt_url
    assert url == f"https://r.example.com/e/{SALE_ID}"
    assert not load_settings(write(tmp_path, MINIMAL)).warnings
