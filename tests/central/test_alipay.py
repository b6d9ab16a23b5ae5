"""The Alipay face-to-face client against the wire-level simulator over real HTTP on 127.0.0.1, plus RSA2
signing checked against Alipay's own published vector and an independent computation."""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import json
import socket
import time
import zipfile
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from central.payments.alipay import (
    PAY_SUB_CODES,
    AlipayClient,
    AlipayRejected,
    fen_to_yuan,
    format_time,
    load_private_key,
    load_public_key,
    parse_bill_csv,
    parse_bill_zip,
    parse_time,
    rsa2_sign,
    rsa2_verify,
    signing_string,
    top_level_members,
    verified_node,
    yuan_to_fen,
)
from central.payments.provider import (
    Charge,
    Outcome,
    ProviderBadResponse,
    ProviderRejected,
    ProviderUnreachable,
)
from central.payments.simulators import serve_in_thread
from central.payments.simulators.alipay import AlipaySimulator, generate_rsa_keypair

APP_ID = "2021000000000001"
# 2024-05-01 12:00 in Shanghai: the simulator's clock stands still unless a test advances it.
T0 = datetime(2024, 5, 1, 4, 0, tzinfo=UTC)
_serials = itertools.count(1)


def auth_code(scenario: str, customer: str = "4242") -> str:
    """An Alipay-shaped code: prefix 28, four digits naming the customer, a serial, the scenario (18 digits)."""
    return f"28{customer}{next(_serials):010d}{scenario}"


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def keys() -> SimpleNamespace:
    merchant_private, merchant_public = generate_rsa_keypair()
    alipay_private, alipay_public = generate_rsa_keypair()
    stranger_private, _ = generate_rsa_keypair()
    return SimpleNamespace(
        merchant_private=merchant_private,
        merchant_public=merchant_public,
        alipay_private=alipay_private,
        alipay_public=alipay_public,
        stranger_private=stranger_private,
    )


@pytest.fixture
def sim(keys: SimpleNamespace) -> Iterator[AlipaySimulator]:
    """The simulator on a real socket; `sim.url` is where it listens."""
    simulator = AlipaySimulator(
        keys.merchant_public,
        keys.alipay_private,
        app_id=APP_ID,
        clock=lambda: T0,
        userpaying_seconds=5,
        slow_seconds=1.0,
    )
    served = serve_in_thread(simulator.app())
    simulator.url = served.url  # type: ignore[attr-defined]
    yield simulator
    served.stop()


def make_client(sim: AlipaySimulator, keys: SimpleNamespace, **overrides: Any) -> AlipayClient:
    values: dict[str, Any] = {
        "base_url": sim.url,
        "app_id": APP_ID,
        "private_key_pem": keys.merchant_private,
        "alipay_public_key_pem": keys.alipay_public,
        "timeout_s": 5.0,
        "now": lambda: T0,
    }
    values |= overrides
    return AlipayClient.from_values(**values)


@pytest.fixture
def client(sim: AlipaySimulator, keys: SimpleNamespace) -> AlipayClient:
    return make_client(sim, keys)


def charge(code: str, out_trade_no: str, amount_fen: int = 1230) -> Charge:
    return Charge(
        out_trade_no=out_trade_no,
        auth_code=code,
        amount_fen=amount_fen,
        description="演示门店 消费",
        store_id="SH001",
        station_id="T01",
    )


# --- signing -------------------------------------------------------------------------------------------------

# From Alipay's Java SDK (alipay/alipay-sdk-java-all, src/test/java/com/alipay/api/RSACheckTest.java): parameters
# signed RSA2 by Alipay's test merchant, verified with the public key of its certificate
# src/test/resources/fixture/appCertPublicKey_2019091767145019.crt (extracted here as base64 DER).
ALIPAY_TEST_PUBLIC_KEY = (
    "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAjuWo0SEz7Oa6h927DFEL8d4BxhbVLX9iahEQXvURXZu3jF7FyzSneE8YTEzUhe6vscRl"
    "9zWOyr7tTaSFGg0RWxp0FkyxU9O1zdqK6IdY3+BSJJvi4z+GcBFBJS3UzuYRfGklHPSRYmxJSqNzHYGi+7TRwYVshkZe/8fzpDMF8+lF32oBPfSt"
    "9KJlvcKO2J5UxOrrTCZYh13z/WtmkbL4QRcEYaRc5CgZMGBReh9AjPCtaKABM23/42DHrS440x4lMuTVFij7UX9XaJY2CwQKqFTrbzeJDpJyOZSG"
    "s5VW6HbRM5JoXHbFzM0LULDmo/6Ea0hOdi4YhMNXFKGjWT7ThQIDAQAB"
)
ALIPAY_VECTORS = [
    (
        {"method": "koubei.marketing.data.indicator.query", "app_id": "2019090366875133", "sign_type": "RSA2"},
        (
            "JzoDc8VxY1/w6yN9WdWV10aipS3YcRpK+jw4xfLybf90ZK9L3AHLUJbNLWVnHW3IuLoJbBeSGVxSbPBhe4ggPklcYUkPowgtlZ6YlthuQDtjF2"
            "3h2obXuXkQRd+RPbDWvOA5AYQjsKH8uSHil5aRARewPIPhukl9Mn4HEovUccsBR/RirQFSGmGYiMM0zvhVSR7pXZDEhiADzvzAkvVVTI1/HbNq"
            "coBU4ctSPAGsuDPO/mah1+IwGQAuPP6xoEPL+3zQ0wztQCwHT2o8aQmxFJ9a09q8ybRprHaNjCgTaLDeTWE0o1pllZIE8c7wnG3cOuj6quYjTc"
            "QyLm6P4M87Zw=="
        ),
    ),
    (
        {
            "method": "koubei.marketing.data.indicator.query",
            "app_id": "2019090366875133",
            "extra": "中文测试",
            "sign_type": "RSA2",
        },
        (
            "KrRGUY3/2JX3KtlLgus8CbK0xuUIBDCpOdJkVzJDefez6HvlA8RA6uCVj2rrMd7DgVfarG5SROdSnkZbf8MLKHbVoFqi9w0QCvto9mc8n3ezfW"
            "ejZECJVCZhbJ3OslB+4gij9+F70usrnCNEJZm02ntyNdVzcqMbgdRMB93BJIRC1jjmCotpXgXWrRdTb/SfhIAkoHqgGi2aCUHuLDInLGZCn8Ne"
            "ziGWMnFOic6/sE/nMpwriOmwLb2nyzD0fGiolwuuxlOGMcBHAb22J8XqchFHyCpbs2A/rWdJMjhUfqsErbtZQM93fi1xfL2pUa9RMWX0Q81Qk7"
            "iSEeHCR+NGyQ=="
        ),
    ),
]


@pytest.mark.parametrize("params, sign", ALIPAY_VECTORS, ids=["ascii", "chinese"])
def test_alipay_published_vector_verifies(params: dict[str, str], sign: str) -> None:
    key = load_public_key(ALIPAY_TEST_PUBLIC_KEY)  # Alipay's bare base64 form
    assert rsa2_verify(signing_string(params | {"sign": sign, "empty": ""}), sign, key)
    assert not rsa2_verify(signing_string(params | {"app_id": "2019090366875134"}), sign, key)


def test_signing_string_rules() -> None:
    params = {"sign": "x", "b": "2", "a": "1", "empty": "", "none": None, "biz_content": '{"subject":"中文 & = +"}'}
    # Sorted by key, no empty values, no `sign`, values as they are (no URL encoding).
    assert signing_string(params) == 'a=1&b=2&biz_content={"subject":"中文 & = +"}'


def test_rsa2_matches_an_independent_computation(keys: SimpleNamespace) -> None:
    private = serialization.load_pem_private_key(keys.merchant_private.encode(), None)
    client = AlipayClient.from_values(
        "http://127.0.0.1:9", APP_ID, keys.merchant_private, keys.alipay_public, now=lambda: T0
    )
    params = client.signed_params(
        "alipay.trade.pay", {"out_trade_no": "A1", "total_amount": "0.01", "subject": "演示门店 消费"}
    )
    assert (
        params["timestamp"] == "2024-05-01 12:00:00" and params["sign_type"] == "RSA2" and params["charset"] == "utf-8"
    )
    by_hand = "&".join(f"{k}={params[k]}" for k in sorted(params) if k != "sign")
    expected = base64.b64encode(private.sign(by_hand.encode("utf-8"), padding.PKCS1v15(), hashes.SHA256())).decode()
    assert params["sign"] == expected  # PKCS#1 v1.5 is deterministic
    private.public_key().verify(
        base64.b64decode(params["sign"]), by_hand.encode("utf-8"), padding.PKCS1v15(), hashes.SHA256()
    )
    assert rsa2_sign(by_hand, load_private_key(keys.merchant_private)) == expected


def test_response_signature_covers_the_exact_bytes(keys: SimpleNamespace) -> None:
    alipay = load_private_key(keys.alipay_private)
    public = load_public_key(keys.alipay_public)
    # Spacing, an escaped slash and \u escapes: re-serialising the parsed object would change the bytes.
    raw = '{ "code" : "10000", "msg":"Success", "note":"a\\/b \\u4e2d", "total_amount":"0.01" }'
    body = ('{"alipay_trade_query_response":' + raw + ',\n "sign":"' + rsa2_sign(raw, alipay) + '"}').encode()
    node = verified_node(body, "alipay.trade.query", public)
    assert node["note"] == "a/b 中" and node["total_amount"] == "0.01"
    reserialised = json.dumps(node, ensure_ascii=False, separators=(",", ":"))
    assert not rsa2_verify(reserialised, rsa2_sign(raw, alipay), public)
    with pytest.raises(ValueError, match="repeated"):
        top_level_members('{"a":1,"a":2}')
    with pytest.raises(ProviderBadResponse, match="not JSON"):
        verified_node(body + b"x", "alipay.trade.query", public)


# --- money and time ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fen, yuan", [(1, "0.01"), (10, "0.10"), (1230, "12.30"), (100, "1.00"), (9999999, "99999.99"), (0, "0.00")]
)
def test_fen_to_yuan_is_exact(fen: int, yuan: str) -> None:
    assert fen_to_yuan(fen) == yuan
    assert yuan_to_fen(yuan) == fen


def test_yuan_to_fen_is_exact_or_refuses() -> None:
    assert (
        yuan_to_fen("12.3") == 1230
        and yuan_to_fen("7") == 700
        and yuan_to_fen("-35.80") == -3580
        and yuan_to_fen("0.29") == 29
    )
    for fen in range(0, 200_000, 7):  # every value a float round trip would get wrong stays exact
        assert yuan_to_fen(fen_to_yuan(fen)) == fen
    for bad in ("12.345", "1e3", "", " ", "abc", "1,000.00", "NaN", "12.", ".5"):
        with pytest.raises(ValueError):
            yuan_to_fen(bad)
    with pytest.raises(TypeError):
        fen_to_yuan(Decimal("1.5"))  # type: ignore[arg-type]


def test_times_are_shanghai_on_the_wire_and_utc_here() -> None:
    assert parse_time("2024-05-01 12:00:00") == T0
    assert parse_time("2024-05-01 07:59:59") == datetime(2024, 4, 30, 23, 59, 59, tzinfo=UTC)
    assert format_time(T0) == "2024-05-01 12:00:00"
    with pytest.raises(ValueError):
        format_time(datetime(2024, 5, 1, 12))


# --- scenarios end to end (the WeChat simulator's table) ----------------------------------------------------


def test_default_immediate_success(client: AlipayClient, sim: AlipaySimulator) -> None:
    code = auth_code("00", customer="0042")
    result = run(client.charge(charge(code, "S00")))
    assert result.outcome is Outcome.SUCCESS and result.out_trade_no == "S00"
    assert (
        result.payer_id == "2088100000000042" == sim.buyer_for(code)
        and result.provider_trade_no == sim.order("S00").trade_no
    )
    assert result.amount_fen == 1230 and result.paid_at == T0
    queried = run(client.query("S00"))
    assert (queried.outcome, queried.payer_id, queried.amount_fen, queried.paid_at) == (
        Outcome.SUCCESS,
        result.payer_id,
        1230,
        T0,
    )
    assert (sim.order("S00").store_id, sim.order("S00").terminal_id) == ("SH001", "SH001-T01")
    # The same customer from another code: the same buyer.
    assert run(client.charge(charge(auth_code("77", customer="0042"), "S00b"))).payer_id == result.payer_id


def test_10_userpaying_then_paid(client: AlipayClient, sim: AlipaySimulator) -> None:
    result = run(client.charge(charge(auth_code("10"), "S10")))
    assert result.outcome is Outcome.USERPAYING and result.provider_trade_no
    sim.advance(4)
    assert run(client.query("S10")).outcome is Outcome.USERPAYING
    sim.advance(1)
    paid = run(client.query("S10"))
    assert (
        paid.outcome is Outcome.SUCCESS
        and paid.paid_at == T0 + timedelta(seconds=5)
        and paid.payer_id.startswith("2088")
    )


def test_11_userpaying_then_the_customer_cancels(client: AlipayClient, sim: AlipaySimulator) -> None:
    assert run(client.charge(charge(auth_code("11"), "S11"))).outcome is Outcome.USERPAYING
    sim.advance(5)
    closed = run(client.query("S11"))
    assert closed.outcome is Outcome.REVERSED and closed.code == "TRADE_CLOSED"


def test_12_never_confirmed_until_cancelled(client: AlipayClient, sim: AlipaySimulator) -> None:
    assert run(client.charge(charge(auth_code("12"), "S12"))).outcome is Outcome.USERPAYING
    sim.advance(300)
    assert run(client.query("S12")).outcome is Outcome.USERPAYING
    done = run(client.reverse("S12"))
    assert (done.done, done.recall, done.code) == (True, False, "close")
    assert run(client.query("S12")).outcome is Outcome.REVERSED


@pytest.mark.parametrize("scenario, code", [("20", "isp.unknow-error"), ("21", "ACQ.SYSTEM_ERROR")])
def test_20_21_unknown_then_paid_on_query(client: AlipayClient, scenario: str, code: str) -> None:
    result = run(client.charge(charge(auth_code(scenario), f"S{scenario}")))
    assert result.outcome is Outcome.UNKNOWN and result.code == code
    assert run(client.query(f"S{scenario}")).outcome is Outcome.SUCCESS


@pytest.mark.parametrize("scenario", ["30", "31"])
def test_30_31_expired_or_invalid_code(client: AlipayClient, scenario: str) -> None:
    result = run(client.charge(charge(auth_code(scenario), f"S{scenario}")))
    assert result.outcome is Outcome.FAILED and result.code == "ACQ.PAYMENT_AUTH_CODE_INVALID"
    meaning = PAY_SUB_CODES["ACQ.PAYMENT_AUTH_CODE_INVALID"]
    assert (result.reason_zh, result.reason_en) == (meaning.zh, meaning.en)
    assert "刷新付款码" in result.reason_zh and "refresh" in result.reason_en
    assert run(client.query(f"S{scenario}")).outcome is Outcome.NOT_FOUND


def test_32_insufficient_funds(client: AlipayClient) -> None:
    result = run(client.charge(charge(auth_code("32"), "S32")))
    assert result.outcome is Outcome.FAILED and result.code == "ACQ.BUYER_BALANCE_NOT_ENOUGH"
    assert "余额不足" in result.reason_zh and "Insufficient balance" in result.reason_en
    assert run(client.query("S32")).outcome is Outcome.NOT_FOUND


def test_40_cancel_asks_for_a_retry(client: AlipayClient, sim: AlipaySimulator) -> None:
    assert run(client.charge(charge(auth_code("40"), "S40"))).outcome is Outcome.USERPAYING
    first = run(client.reverse("S40"))
    assert (first.done, first.recall) == (False, True)
    assert run(client.query("S40")).outcome is Outcome.USERPAYING  # retry_flag=Y: nothing was done
    second = run(client.reverse("S40"))
    assert (second.done, second.recall, second.code) == (True, False, "close")
    assert run(client.query("S40")).outcome is Outcome.REVERSED
    assert sim.count("alipay.trade.cancel", "S40") == 2 == sim.count("reverse", "S40")


def test_41_cancel_fails_twice(client: AlipayClient) -> None:
    assert run(client.charge(charge(auth_code("41"), "S41"))).outcome is Outcome.USERPAYING
    with pytest.raises(ProviderBadResponse, match="HTTP 500"):
        run(client.reverse("S41"))
    second = run(client.reverse("S41"))
    assert (second.done, second.recall, second.code) == (False, True, "ACQ.SYSTEM_ERROR")
    third = run(client.reverse("S41"))
    assert (third.done, third.code) == (True, "close")


def test_50_answer_after_the_timeout_then_query(sim: AlipaySimulator, keys: SimpleNamespace) -> None:
    impatient = make_client(sim, keys, timeout_s=0.3)
    started = time.monotonic()
    with pytest.raises(ProviderUnreachable, match="no answer within"):
        run(impatient.charge(charge(auth_code("50"), "S50")))
    assert time.monotonic() - started < 0.9
    # The charge went through: the caller finds out by query, never by charging again.
    result = run(impatient.query("S50"))
    assert result.outcome is Outcome.SUCCESS and result.amount_fen == 1230


@pytest.mark.parametrize("scenario, message", [("51", "does not verify"), ("52", "not JSON")])
def test_51_52_spoiled_answer_then_query(client: AlipayClient, scenario: str, message: str) -> None:
    with pytest.raises(ProviderBadResponse, match=message):
        run(client.charge(charge(auth_code(scenario), f"S{scenario}")))
    assert run(client.query(f"S{scenario}")).outcome is Outcome.SUCCESS


def test_other_endings_succeed_and_amounts_stay_exact(client: AlipayClient, sim: AlipaySimulator) -> None:
    for out_trade_no, fen in (("A1", 1), ("A2", 1230), ("A3", 9999999)):
        result = run(client.charge(charge(auth_code("58"), out_trade_no, amount_fen=fen)))
        assert result.outcome is Outcome.SUCCESS and result.amount_fen == fen
        assert sim.order(out_trade_no).amount_fen == fen
        assert run(client.query(out_trade_no)).amount_fen == fen


def test_amount_must_be_positive(client: AlipayClient, sim: AlipaySimulator) -> None:
    for fen in (0, -100):
        with pytest.raises(ValueError, match="positive"):
            run(client.charge(charge(auth_code("00"), "Z0", amount_fen=fen)))
    assert sim.calls == []  # refused before anything went out


def test_a_wechat_code_or_a_used_code_is_refused(client: AlipayClient, sim: AlipaySimulator) -> None:
    wechat = run(client.charge(charge("134567890123456700", "W1")))
    assert wechat.outcome is Outcome.FAILED and wechat.code == "ACQ.PAYMENT_AUTH_CODE_INVALID"
    sim.single_use_codes = True  # as Alipay: a code pays once
    code = auth_code("00")
    assert run(client.charge(charge(code, "U1"))).outcome is Outcome.SUCCESS
    again = run(client.charge(charge(code, "U2")))
    assert again.outcome is Outcome.FAILED and again.code == "ACQ.PAYMENT_AUTH_CODE_INVALID"


def test_the_same_order_charged_again(client: AlipayClient) -> None:
    code = auth_code("00")
    assert run(client.charge(charge(code, "R1"))).outcome is Outcome.SUCCESS
    # Already paid: not a failure, the gateway must query (and finds the payment).
    again = run(client.charge(charge(code, "R1")))
    assert again.outcome is Outcome.UNKNOWN and again.code == "ACQ.TRADE_HAS_SUCCESS"
    assert run(client.query("R1")).outcome is Outcome.SUCCESS
    other = run(client.charge(charge(code, "R1", amount_fen=999)))  # another amount: what became of R1 is for the query
    assert other.outcome is Outcome.UNKNOWN and other.code == "ACQ.CONTEXT_INCONSISTENT"


def test_cancel_of_a_paid_order_refunds(client: AlipayClient, sim: AlipaySimulator) -> None:
    assert run(client.charge(charge(auth_code("00"), "C1"))).outcome is Outcome.SUCCESS
    done = run(client.reverse("C1"))
    assert (done.done, done.recall, done.code) == (True, False, "refund")
    assert run(client.query("C1")).outcome is Outcome.REVERSED
    assert run(client.reverse("C1")).done  # again: still done
    nothing = run(client.reverse("NEVER-CHARGED"))
    assert (nothing.done, nothing.recall, nothing.code) == (True, False, "ACQ.TRADE_NOT_EXIST")
    assert run(client.charge(charge(auth_code("00"), "C2"))).outcome is Outcome.SUCCESS
    sim.advance(25 * 3600)
    late = run(client.reverse("C2"))
    assert (late.done, late.recall, late.code) == (False, False, "ACQ.TRADE_CANCEL_TIME_OUT")


def test_identify_gives_nothing_before_a_charge(client: AlipayClient, sim: AlipaySimulator) -> None:
    assert run(client.identify(auth_code("00"))) is None
    assert sim.calls == []


# --- faults --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["bad_signature", "tampered_body", "unsigned"])
def test_a_spoiled_answer_signature_is_refused(client: AlipayClient, sim: AlipaySimulator, fault: str) -> None:
    sim.inject(fault)  # type: ignore[arg-type]
    with pytest.raises(ProviderBadResponse):
        run(client.charge(charge(auth_code("00"), "F1")))
    assert run(client.query("F1")).outcome is Outcome.SUCCESS  # it was charged: only the answer was spoiled


def test_a_non_json_answer_is_refused(client: AlipayClient, sim: AlipaySimulator) -> None:
    sim.inject("not_json")
    with pytest.raises(ProviderBadResponse, match="not JSON"):
        run(client.query("F2"))


def test_the_answer_signed_by_someone_else_is_refused(sim: AlipaySimulator, keys: SimpleNamespace) -> None:
    fooled = make_client(sim, keys, alipay_public_key_pem=keys.merchant_public)
    with pytest.raises(ProviderBadResponse, match="does not verify"):
        run(fooled.query("F3"))


def test_a_request_with_a_bad_signature_is_refused(sim: AlipaySimulator, keys: SimpleNamespace) -> None:
    wrong_key = make_client(sim, keys, private_key_pem=keys.stranger_private)
    code = auth_code("00")
    with pytest.raises(AlipayRejected) as caught:
        run(wrong_key.charge(charge(code, "F4")))
    assert caught.value.code == "40002" and caught.value.sub_code == "isv.invalid-signature" and not caught.value.signed
    assert isinstance(caught.value, ProviderRejected)  # caught like WeChat's return_code FAIL
    assert "isv.invalid-signature" in str(caught.value) and "验签字符串" in str(caught.value)
    assert code not in str(caught.value) and '"auth_code":"***"' in str(caught.value)  # no auth code in logs
    assert sim.order("F4") is None  # nothing was charged


def test_a_wrong_app_id_is_refused(sim: AlipaySimulator, keys: SimpleNamespace) -> None:
    with pytest.raises(AlipayRejected, match="isv.invalid-app-id"):
        run(make_client(sim, keys, app_id="2021000000000999").query("F5"))


def test_nobody_listening_is_unreachable(keys: SimpleNamespace) -> None:
    nowhere = AlipayClient.from_values(
        f"http://127.0.0.1:{_free_port()}", APP_ID, keys.merchant_private, keys.alipay_public, timeout_s=2
    )
    assert nowhere.gateway_url.endswith("/gateway.do")
    with pytest.raises(ProviderUnreachable, match="cannot reach"):
        run(nowhere.charge(charge(auth_code("00"), "F6")))


# --- bill ----------------------------------------------------------------------------------------------------


def test_bill_of_the_day(client: AlipayClient, sim: AlipaySimulator) -> None:
    run(client.charge(charge(auth_code("00"), "B1", amount_fen=1)))
    run(client.charge(charge(auth_code("00"), "B2", amount_fen=9999999)))
    run(client.charge(charge(auth_code("32"), "B3")))  # failed: not in the bill
    run(client.charge(charge(auth_code("12"), "B5")))  # never paid, then cancelled: not in the bill
    run(client.reverse("B5"))
    sim.add_order("B6", 500)  # paid, but the store never heard of it
    run(client.charge(charge(auth_code("00"), "B4", amount_fen=3580)))
    run(client.reverse("B4"))
    day = date(2024, 5, 1)
    with pytest.raises(AlipayRejected, match="isp.bill_not_exist"):
        run(client.bill(day))  # the day is not over yet
    sim.advance(12 * 3600)  # 2024-05-02 00:00 in Shanghai
    rows = run(client.bill(day))
    found = sorted((r.out_trade_no, r.status, r.amount_fen) for r in rows)
    assert found == [
        ("B1", "SUCCESS", 1),
        ("B2", "SUCCESS", 9999999),
        ("B4", "REFUND", 3580),
        ("B4", "SUCCESS", 3580),
        ("B6", "SUCCESS", 500),
    ]
    b2 = next(r for r in rows if r.out_trade_no == "B2")
    assert b2.paid_at == T0 and b2.provider_trade_no == sim.order("B2").trade_no and "\t" not in b2.provider_trade_no
    assert b2.device == "SH001-T01" and b2.payer_id is None
    assert run(client.bill(date(2024, 4, 30))) == []


def test_bill_zip_is_gbk_and_parsed_by_content(sim: AlipaySimulator) -> None:
    archive = zipfile.ZipFile(io.BytesIO(sim.bill_zip(date(2024, 5, 1))))
    texts = [archive.read(name).decode("gbk") for name in archive.namelist()]
    assert any("业务明细列表" in t for t in texts) and any("业务汇总列表" in t for t in texts)
    with pytest.raises(ProviderBadResponse, match="not the bill zip"):
        parse_bill_zip(b"<html>expired</html>")


def test_a_cut_short_bill_is_refused(client: AlipayClient, sim: AlipaySimulator) -> None:
    run(client.charge(charge(auth_code("00"), "T1")))
    run(client.charge(charge(auth_code("00"), "T2")))
    archive = zipfile.ZipFile(io.BytesIO(sim.bill_zip(date(2024, 5, 1))))
    text = archive.read(next(name for name in archive.namelist() if "汇总" not in name)).decode("gbk")
    assert len(parse_bill_csv(text)) == 2
    lines = text.splitlines()
    without_a_row = "\n".join(line for line in lines if "T2\t" not in line)
    with pytest.raises(ProviderBadResponse, match="footer counts 2"):
        parse_bill_csv(without_a_row)
    no_end = "\n".join(line for line in lines if "业务明细列表结束" not in line)
    with pytest.raises(ProviderBadResponse, match="no 业务明细列表 section"):
        parse_bill_csv(no_end)


# --- construction --------------------------------------------------------------------------------------------


def test_built_from_settings_with_key_files(sim: AlipaySimulator, keys: SimpleNamespace, tmp_path: Path) -> None:
    private_path, public_path = tmp_path / "app_private.pem", tmp_path / "alipay_public.txt"
    private_path.write_text(keys.merchant_private)
    # Alipay's console shows its public key as bare base64: accepted as is.
    der = load_public_key(keys.alipay_public).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    public_path.write_text(base64.b64encode(der).decode())
    settings = SimpleNamespace(
        alipay_base_url=sim.url,
        alipay_app_id=APP_ID,
        alipay_private_key_path=private_path,
        alipay_public_key_path=str(public_path),
    )
    client = AlipayClient(settings)
    assert client.name == "alipay" and client.gateway_url == f"{sim.url}/gateway.do" and client.timeout_s == 10.0
    assert client.payer_id_kind == f"openid:{APP_ID}"
    assert run(client.charge(charge(auth_code("00"), "K1"))).outcome is Outcome.SUCCESS


def test_a_wrong_key_file_names_the_setting(keys: SimpleNamespace, tmp_path: Path) -> None:
    private_path, public_path = tmp_path / "app_private.pem", tmp_path / "alipay_public.pem"
    private_path.write_text(keys.merchant_private)
    public_path.write_text(keys.merchant_private)  # the private key where Alipay's public key belongs
    settings = SimpleNamespace(
        alipay_base_url="https://openapi.alipay.com/gateway.do",
        alipay_app_id=APP_ID,
        alipay_private_key_path=private_path,
        alipay_public_key_path=public_path,
    )
    with pytest.raises(ValueError, match="Alipay's public key.*alipay_public_key_path"):
        AlipayClient(settings)


# --- the charge's expiry: time_expire and timeout_express -----------------------------------------------------


def expiring(code: str, out_trade_no: str, after: timedelta) -> Charge:
    """A charge central gives up on `after` its sending (the gateway's payment limit); the client's clock is T0."""
    return Charge(out_trade_no, code, 1230, "演示门店 消费", "SH001", "T01", expires_at=T0 + after)


def test_trade_pay_carries_the_expiry_no_shorter_than_alipay_allows(client: AlipayClient, sim: AlipaySimulator) -> None:
    # The gateway's 30 s limit is under Alipay's shortest (1 minute): time_expire is a minute and the allowance
    # ahead, timeout_express 1m.
    assert run(client.charge(expiring(auth_code("00"), "E1", timedelta(seconds=30)))).outcome is Outcome.SUCCESS
    assert (sim.order("E1").time_expire, sim.order("E1").timeout_express) == ("2024-05-01 12:01:10", "1m")
    # A longer limit is sent as it is, in Shanghai time; timeout_express in whole minutes, rounded up.
    assert (
        run(client.charge(expiring(auth_code("00"), "E2", timedelta(minutes=4, seconds=1)))).outcome is Outcome.SUCCESS
    )
    assert (sim.order("E2").time_expire, sim.order("E2").timeout_express) == ("2024-05-01 12:04:01", "5m")
    # A charge without an expiry sends neither.
    assert run(client.charge(charge(auth_code("00"), "E3"))).outcome is Outcome.SUCCESS
    assert (sim.order("E3").time_expire, sim.order("E3").timeout_express) == (None, None)


def test_a_trade_pay_that_arrives_after_its_expiry_is_closed_not_paid(
    client: AlipayClient, sim: AlipaySimulator
) -> None:
    sim.advance(71)  # the request reaches Alipay after its time_expire (sent at T0, expiring T0 + 70 s)
    late = run(client.charge(expiring(auth_code("00"), "E4", timedelta(seconds=30))))
    assert (late.outcome, late.code) == (Outcome.REVERSED, "ACQ.TRADE_HAS_CLOSE")
    assert run(client.query("E4")).outcome is Outcome.REVERSED and sim.order("E4").paid_at is None


def test_a_trade_still_waiting_for_the_customer_is_closed_at_its_expiry(
    client: AlipayClient, sim: AlipaySimulator
) -> None:
    assert run(client.charge(expiring(auth_code("12"), "E5", timedelta(seconds=90)))).outcome is Outcome.USERPAYING
    sim.advance(89)
    assert run(client.query("E5")).outcome is Outcome.USERPAYING
    sim.advance(1)
    closed = run(client.query("E5"))
    assert (closed.outcome, closed.code) == (Outcome.REVERSED, "TRADE_CLOSED")
    assert run(client.reverse("E5")).done  # the gateway's reverse of it still ends well


def test_timeout_express_alone_counts_from_the_trade_and_must_be_1m_to_15d(
    client: AlipayClient, sim: AlipaySimulator
) -> None:
    def pay(out_trade_no: str, scenario: str, **extra: str) -> dict[str, Any]:
        biz = {
            "out_trade_no": out_trade_no,
            "scene": "bar_code",
            "auth_code": auth_code(scenario),
            "subject": "演示门店 消费",
            "total_amount": "12.30",
            **extra,
        }
        return run(client._call("alipay.trade.pay", biz))

    for bad in ("0m", "16d", "1.5h", "90s"):
        refused = pay(f"E6{bad}", "12", timeout_express=bad)
        assert (refused["code"], refused["sub_code"]) == ("40004", "ACQ.INVALID_PARAMETER")
    assert pay("E7", "12", timeout_express="2m")["code"] == "10003"
    sim.advance(119)
    assert run(client.query("E7")).outcome is Outcome.USERPAYING
    sim.advance(1)
    assert run(client.query("E7")).outcome is Outcome.REVERSED
