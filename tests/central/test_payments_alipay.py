"""The same gateway with Alipay: central (SQLite and PostgreSQL) built from settings with the Alipay client
(central/payments/alipay.py) against the Alipay simulator, both over HTTP on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from central.cli import cli
from central.payments.reconcile import CHINA
from central.payments.simulators import serve_in_thread
from central.payments.simulators.alipay import AlipaySimulator, generate_rsa_keypair
from tests.central.test_payments import final_answer, follow, new_otn, pay
from tests.support.timings import FAST_PAYMENTS

APP_ID = "2021000000000001"


@pytest.fixture(scope="module")
def rsa_keys():
    return generate_rsa_keypair(), generate_rsa_keypair()


def serve_alipay(rsa_keys, **options) -> Iterator[AlipaySimulator]:
    """An Alipay simulator on 127.0.0.1 for the duration of a fixture (`yield from` it); `.keys` holds the
    merchant's private key and Alipay's public key, as central's settings want them."""
    (merchant_private, merchant_public), (alipay_private, alipay_public) = rsa_keys
    simulator = AlipaySimulator(merchant_public, alipay_private, app_id=APP_ID, **options)
    served = serve_in_thread(simulator.app())
    simulator.url = served.url
    simulator.keys = (merchant_private, alipay_public)
    yield simulator
    served.stop()


def alipay_central(central_factory, alipay: AlipaySimulator, tmp_path: Path):
    """A central service with Alipay pointed at the simulator, its gateway's timings shrunk."""
    merchant_private, alipay_public = alipay.keys
    (tmp_path / "app_private.pem").write_text(merchant_private)
    (tmp_path / "alipay_public.pem").write_text(alipay_public)
    fast = {k: v for k, v in FAST_PAYMENTS.items() if not k.startswith("wechat_")}
    return central_factory(
        alipay_base_url=alipay.url,
        alipay_app_id=APP_ID,
        alipay_private_key_path=tmp_path / "app_private.pem",
        alipay_public_key_path=tmp_path / "alipay_public.pem",
        alipay_timeout_seconds=0.4,
        **fast,
    )


@pytest.fixture
def alipay(rsa_keys):
    yield from serve_alipay(rsa_keys, userpaying_seconds=0.2, slow_seconds=0.7)


@pytest.fixture
def paying(central_factory, alipay, tmp_path):
    server = alipay_central(central_factory, alipay, tmp_path)
    store = server.add_store("S1")
    with server.client(store) as client:
        yield server, client


def code(scenario: str, customer: str = "0001") -> str:
    return f"28{customer}{new_otn()[-10:]}{scenario}"


def test_paid_at_once_and_the_buyer_linked_to_the_member(paying, alipay):
    server, client = paying
    member = server.add_member()
    first = code("00", customer="0042")
    identified = client.post("/v1/payments/identify", json={"auth_code": first}).json()
    assert identified["provider"] == "alipay" and identified["payer"] is None and identified["may_redeem"] is False
    payment = pay(client, first, 1230, member_id=member).json()
    assert payment["state"] == "SUCCESS" and payment["provider"] == "alipay" and payment["amount_fen"] == 1230
    assert payment["payer"] == {"appid": APP_ID, "openid": alipay.buyer_for(first)}
    again = pay(client, code("00", customer="0042"), 100).json()
    assert again["member_id"] == member  # the buyer id was linked by the first payment
    wechat = pay(client, "134567890123456700")
    assert wechat.status_code == 422 and wechat.json()["error"] == "provider_not_configured"


@pytest.mark.parametrize(
    ("scenario", "state"), [("10", "SUCCESS"), ("11", "REVERSED"), ("20", "SUCCESS"), ("50", "SUCCESS")]
)
def test_waiting_and_unknown_outcomes_are_followed_to_the_end(paying, alipay, scenario, state):
    server, client = paying
    otn = pay(client, code(scenario)).json()["out_trade_no"]
    assert follow(client, otn)["state"] == state
    assert alipay.count("alipay.trade.pay") == 1


def test_definite_failure_and_a_cancel_that_asks_to_be_retried(paying, alipay):
    server, client = paying
    failed = final_answer(client, pay(client, code("32")).json())
    assert failed["state"] == "FAILED" and failed["reason_zh"] and failed["code"]
    otn = pay(client, code("40")).json()["out_trade_no"]
    assert client.post(f"/v1/payments/{otn}/reverse").json()["state"] == "REVERSING"
    assert follow(client, otn)["state"] == "REVERSED"
    assert alipay.count("alipay.trade.cancel", otn) == 2


def test_the_alipay_bill_reconciles_through_the_same_command(paying, alipay, tmp_path):
    server, client = paying
    alipay.bill_same_day = True  # the simulator's bill for today, without waiting for the day to end
    paid = pay(client, code("00"), 1230).json()
    stranger = alipay.add_order("S1T09ALIUNKNOWN1", 555, terminal_id="S1-T09")
    settings = tmp_path / "central.toml"
    settings.write_text(
        f'environment = "development"\ndatabase_url = "{server.settings.database_url}"\n'
        f'phone_hash_key = "{server.settings.phone_hash_key.get_secret_value()}"\nalipay_base_url = "{alipay.url}"\n'
        f'alipay_app_id = "{APP_ID}"\nalipay_private_key_path = "app_private.pem"\nalipay_public_key_path = "alipay_public.pem"\n'
    )
    day = datetime.now(CHINA).date()
    result = CliRunner().invoke(cli, ["payments", "reconcile", "--config", str(settings), "--day", day.isoformat()])
    assert result.exit_code == 0, result.output
    assert f"alipay {day}: 2 bill rows, 1 matched, 1 to settle" in result.output
    assert (
        f"charged_not_paid_at_store  {stranger.out_trade_no}" in result.output
        and paid["out_trade_no"] not in result.output
    )
