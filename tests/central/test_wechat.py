"""WeChat Pay v2: signing against WeChat's published vectors, the XML envelope, the text bill, and the client
against the wire-level simulator over real HTTP (no database)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import socket
from datetime import UTC, date, datetime, timedelta

import pytest
from fastapi import FastAPI, Request, Response

from central.payments.provider import Charge, Outcome, ProviderBadResponse, ProviderRejected, ProviderUnreachable
from central.payments.simulators import serve_in_thread
from central.payments.simulators.wechat import WeChatSimulator
from central.payments.wechat import (
    BEIJING,
    WeChatPayClient,
    fen_to_yuan,
    parse_bill,
    parse_xml,
    sign,
    sign_text,
    signature_ok,
    to_xml,
    yuan_to_fen,
)
from tests.support.credentials import APPID, MCH_ID, WECHAT_KEY

# WeChat Pay v2 安全规范 (pay.weixin.qq.com/wiki/doc/api/micropay.php?chapter=4_3), its worked example.
SPEC_PARAMS = {
    "appid": "wxd930ea5d5a258f4f",
    "mch_id": "10000100",
    "device_info": "1000",
    "body": "test",
    "nonce_str": "ibuaiVcKdpRxkhJA",
}
SPEC_KEY = "192006250b4c09247ec02edce69f6a2d"


def test_md5_signature_matches_wechats_published_example():
    assert sign_text(SPEC_PARAMS, SPEC_KEY) == (
        "appid=wxd930ea5d5a258f4f&body=test&device_info=1000&mch_id=10000100&nonce_str=ibuaiVcKdpRxkhJA"
        "&key=192006250b4c09247ec02edce69f6a2d"
    )
    assert sign(SPEC_PARAMS, SPEC_KEY, "MD5") == "9A0A8659F005D6984697E2CA0A9CF3B7"


def test_hmac_sha256_signature_matches_wechats_published_example():
    # The same page gives hash_hmac("sha256", stringSignTemp, key).toUpperCase() for the same parameters.
    assert (
        sign(SPEC_PARAMS, SPEC_KEY, "HMAC-SHA256") == "6A9AE1657590FD6257D693A078E1C3E4BB6BA4DC30B23E0EE2496E54170DACD6"
    )
    # ... which is HMAC-SHA256 keyed with the API key over the text that already ends in &key=.
    text = "&".join(f"{k}={SPEC_PARAMS[k]}" for k in sorted(SPEC_PARAMS)) + f"&key={SPEC_KEY}"
    assert hmac.new(SPEC_KEY.encode(), text.encode(), hashlib.sha256).hexdigest().upper() == sign(
        SPEC_PARAMS, SPEC_KEY, "HMAC-SHA256"
    )


def test_empty_values_and_sign_itself_are_left_out_and_names_sort_by_ascii():
    params = {**SPEC_PARAMS, "sign": "WHATEVER", "attach": "", "detail": None}
    assert sign(params, SPEC_KEY, "MD5") == "9A0A8659F005D6984697E2CA0A9CF3B7"
    assert sign_text({"b": "1", "B": "2", "a_c": "3", "aB": "4"}, "k") == "B=2&aB=4&a_c=3&b=1&key=k"
    signed = {**SPEC_PARAMS, "sign": "9a0a8659f005d6984697e2ca0a9cf3b7"}
    assert signature_ok(signed, SPEC_KEY, "MD5")  # WeChat compares the hex case-insensitively
    assert not signature_ok({**signed, "body": "tampered"}, SPEC_KEY, "MD5")
    assert not signature_ok(SPEC_PARAMS, SPEC_KEY, "MD5")  # no sign at all


def test_xml_envelope_round_trip_and_refusals():
    params = {"body": "演示门店-消费 <&> ]]> end", "total_fee": "1234", "empty": ""}
    assert parse_xml(to_xml(params)) == params
    with pytest.raises(ProviderBadResponse, match="not XML"):
        parse_xml(b"Service Unavailable")
    with pytest.raises(ProviderBadResponse, match="DTD"):
        parse_xml(b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><xml><a>&a;</a></xml>')
    with pytest.raises(ProviderBadResponse, match="not WeChat Pay's"):
        parse_xml(b"<html><body>502</body></html>")


def test_amounts_convert_exactly_between_yuan_and_fen():
    assert [yuan_to_fen(t) for t in ("0.01", "0.10", "12.34", "100", "19.9")] == [1, 10, 1234, 10000, 1990]
    assert [fen_to_yuan(f) for f in (1, 10, 1234, 10000)] == ["0.01", "0.10", "12.34", "100.00"]
    for bad in ("12.345", "abc", ""):
        with pytest.raises(ProviderBadResponse):
            yuan_to_fen(bad)


BILL = (
    "\ufeff交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,"
    "应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率,"
    "订单金额,申请退款金额,费率备注\r\n"
    "`2026-11-23 10:15:00,`wx5f3c9a1e7b2d4068,`1900000109,`0,`S1-T01,`4200002026112300000000000001,`A1,`oABC,`MICROPAY,"
    "`SUCCESS,`CMB_CREDIT,`CNY,`12.34,`0.00,`0,`0,`0.00,`0.00,`,`,`门店消费, 矿泉水,`,`0.07,`0.60%,`12.34,`0.00,`\r\n"
    "`2026-11-23 23:59:59,`wx5f3c9a1e7b2d4068,`1900000109,`0,`S1-T02,`4200002026112300000000000002,`A2,`oDEF,`MICROPAY,"
    "`REVOKED,`OTHERS,`CNY,`0.00,`0.00,`0,`0,`5.00,`0.00,`,`,`门店消费,`,`0.00,`0.60%,`5.00,`0.00,`\r\n"
    "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额\r\n"
    "`2,`12.34,`0.00,`0.00,`0.07,`17.34,`0.00\r\n"
)


def test_the_text_bill_parses_by_column_name_with_beijing_times_in_utc():
    rows = parse_bill(BILL)
    assert [(r.out_trade_no, r.status, r.amount_fen, r.device, r.payer_id) for r in rows] == [
        ("A1", "SUCCESS", 1234, "S1-T01", "oABC"),
        ("A2", "REVOKED", 500, "S1-T02", "oDEF"),
    ]
    assert rows[0].paid_at == datetime(2026, 11, 23, 2, 15, tzinfo=UTC)
    assert rows[1].paid_at == datetime(2026, 11, 23, 15, 59, 59, tzinfo=UTC)  # still the 23rd in Beijing


def test_a_bill_cut_short_or_miscounted_is_refused():
    head, *_ = BILL.split("总交易单数")
    with pytest.raises(ProviderBadResponse, match="no summary"):
        parse_bill(head)
    with pytest.raises(ProviderBadResponse, match="counts 3 rows"):
        parse_bill(BILL.replace("`2,`12.34", "`3,`12.34"))
    with pytest.raises(ProviderBadResponse, match="fields"):
        parse_bill(BILL.replace("`MICROPAY,`SUCCESS", "`MICROPAY,`x,`SUCCESS"))
    assert parse_bill("") == []


# --- the client against the simulator over HTTP ---------------------------------------------------------------


@pytest.fixture(scope="module")
def simulator():
    sim = WeChatSimulator(appid=APPID, mch_id=MCH_ID, api_key=WECHAT_KEY, userpaying_seconds=0.2, slow_seconds=0.6)
    served = serve_in_thread(sim.app())
    sim.url = served.url
    yield sim
    served.stop()


def client(simulator, **overrides) -> WeChatPayClient:
    values = dict(base_url=simulator.url, appid=APPID, mch_id=MCH_ID, api_key=WECHAT_KEY, timeout=0.3)
    return WeChatPayClient(**(values | overrides))


def code(scenario: str, customer: str = "0001") -> str:
    return f"13{customer}{datetime.now(UTC).microsecond:010d}{scenario}"


def run(coroutine):
    return asyncio.run(coroutine)


def charge(out_trade_no: str, auth_code: str, amount: int = 1234) -> Charge:
    return Charge(out_trade_no, auth_code, amount, "演示门店-消费", "S1", "T01")


@pytest.mark.parametrize("sign_type", ["MD5", "HMAC-SHA256"])
def test_micropay_success_with_either_signature_type(simulator, sign_type):
    async def go():
        wechat = client(simulator, sign_type=sign_type)
        try:
            return await wechat.charge(charge(f"W{sign_type[:3]}1", code("00"))), await wechat.query(
                f"W{sign_type[:3]}1"
            )
        finally:
            await wechat.aclose()

    paid, queried = run(go())
    assert paid.outcome is Outcome.SUCCESS and paid.amount_fen == 1234 and paid.provider_trade_no
    assert paid.payer_id == simulator.openid_for(code("00")) and paid.paid_at.tzinfo is not None
    assert queried.outcome is Outcome.SUCCESS and queried.provider_trade_no == paid.provider_trade_no
    assert simulator.orders[f"W{sign_type[:3]}1"].device_info == "S1-T01"


@pytest.mark.parametrize(
    ("scenario", "outcome", "err_code", "zh_part"),
    [
        ("10", Outcome.USERPAYING, "USERPAYING", "输入密码"),
        ("20", Outcome.UNKNOWN, "SYSTEMERROR", "确认"),
        ("21", Outcome.UNKNOWN, "BANKERROR", "确认"),
        ("30", Outcome.FAILED, "AUTHCODEEXPIRE", "过期"),
        ("31", Outcome.FAILED, "AUTH_CODE_INVALID", "无效"),
        ("32", Outcome.FAILED, "NOTENOUGH", "余额不足"),
    ],
)
def test_micropay_error_codes_map_to_outcomes_with_customer_reasons(simulator, scenario, outcome, err_code, zh_part):
    async def go():
        wechat = client(simulator)
        try:
            return await wechat.charge(charge(f"WE{scenario}", code(scenario)))
        finally:
            await wechat.aclose()

    result = run(go())
    assert (result.outcome, result.code) == (outcome, err_code)
    assert zh_part in result.reason_zh and result.reason_en


def test_bad_answers_are_errors_not_outcomes(simulator):
    async def go():
        wechat = client(simulator)
        try:
            with pytest.raises(ProviderBadResponse, match="signature does not verify"):
                await wechat.charge(charge("WB51", code("51")))
            with pytest.raises(ProviderBadResponse, match="not WeChat Pay's|not XML"):
                await wechat.charge(charge("WB52", code("52")))
            with pytest.raises(ProviderUnreachable, match="may have been processed"):
                await wechat.charge(charge("WB50", code("50")))
            # Each was processed all the same: the query finds them paid.
            return [(await wechat.query(o)).outcome for o in ("WB51", "WB52", "WB50")]
        finally:
            await wechat.aclose()

    assert run(go()) == [Outcome.SUCCESS] * 3


def test_a_wrong_key_is_refused_by_the_simulator_and_its_unsigned_refusal_is_a_rejection(simulator):
    async def go():
        wechat = client(simulator, api_key="0" * 32)
        try:
            await wechat.query("WX-ANY")
        finally:
            await wechat.aclose()

    with pytest.raises(ProviderRejected, match="签名错误"):
        run(go())


def test_answers_signed_with_another_key_or_unsigned_do_not_verify():
    answers: list[bytes] = []
    app = FastAPI()

    @app.post("/pay/orderquery")
    async def orderquery() -> Response:
        return Response(answers.pop(0), media_type="text/xml")

    fields = {
        "return_code": "SUCCESS",
        "appid": APPID,
        "mch_id": MCH_ID,
        "nonce_str": "n1",
        "result_code": "SUCCESS",
        "trade_state": "NOTPAY",
        "out_trade_no": "X",
    }
    answers.append(to_xml({**fields, "sign": sign(fields, "2" * 32, "HMAC-SHA256")}))  # someone else's key
    answers.append(to_xml(fields))  # no signature at all
    answers.append(
        to_xml(
            {
                **fields,
                "mch_id": "1999999999",
                "sign": sign({**fields, "mch_id": "1999999999"}, WECHAT_KEY, "HMAC-SHA256"),
            }
        )
    )
    served = serve_in_thread(app)

    async def go():
        wechat = WeChatPayClient(base_url=served.url, appid=APPID, mch_id=MCH_ID, api_key=WECHAT_KEY)
        try:
            for expected in ("signature does not verify", "not signed", "not ours"):
                with pytest.raises(ProviderBadResponse, match=expected):
                    await wechat.query("X")
        finally:
            await wechat.aclose()

    try:
        run(go())
    finally:
        served.stop()


def test_an_unreachable_provider_is_unreachable():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    async def go():
        wechat = WeChatPayClient(
            base_url=f"http://127.0.0.1:{port}", appid=APPID, mch_id=MCH_ID, api_key=WECHAT_KEY, timeout=0.5
        )
        try:
            await wechat.query("X")
        finally:
            await wechat.aclose()

    with pytest.raises(ProviderUnreachable, match="cannot reach"):
        run(go())


def test_query_states_reverse_with_recall_and_identify(simulator):
    async def go():
        wechat = client(simulator)
        try:
            assert (await wechat.query("WQ-NONE")).outcome is Outcome.NOT_FOUND
            assert (await wechat.charge(charge("WQ11", code("11")))).outcome is Outcome.USERPAYING
            assert (await wechat.charge(charge("WQ40", code("40")))).outcome is Outcome.USERPAYING
            await asyncio.sleep(0.25)
            cancelled = await wechat.query("WQ11")
            first, second = await wechat.reverse("WQ40"), await wechat.reverse("WQ40")
            reversed_ = await wechat.query("WQ40")
            payer = await wechat.identify(code("00", customer="0042"))
            again = await wechat.identify(code("32", customer="0042"))
            expired = await wechat.identify(code("30"))
            return cancelled, first, second, reversed_, payer, again, expired
        finally:
            await wechat.aclose()

    cancelled, first, second, reversed_, payer, again, expired = run(go())
    assert cancelled.outcome is Outcome.FAILED and cancelled.code == "PAYERROR" and "取消" in cancelled.reason_zh
    assert (first.done, first.recall, first.code) == (False, True, "SYSTEMERROR")
    assert (second.done, second.recall) == (True, False)
    assert reversed_.outcome is Outcome.REVERSED and reversed_.code == "REVOKED"
    assert payer == again == simulator.openid_for(code("00", customer="0042")) and payer.startswith("o")
    assert expired is None


def test_downloadbill_from_what_the_simulator_processed():
    sim = WeChatSimulator(appid=APPID, mch_id=MCH_ID, api_key=WECHAT_KEY)
    served = serve_in_thread(sim.app())
    sim.url = served.url

    async def go():
        wechat = client(sim)
        try:
            await wechat.charge(charge("WD1", code("00"), 1990))
            await wechat.charge(charge("WD2", code("32"), 500))  # not paid: not on the bill
            await wechat.charge(charge("WD3", code("00"), 100))
            await wechat.reverse("WD3")  # paid then reversed: REVOKED
            today = datetime.now(UTC).astimezone(BEIJING).date()
            return await wechat.bill(today), await wechat.bill(date(2020, 1, 1))
        finally:
            await wechat.aclose()

    try:
        rows, empty = run(go())
    finally:
        served.stop()
    assert sorted((r.out_trade_no, r.status, r.amount_fen) for r in rows) == [
        ("WD1", "SUCCESS", 1990),
        ("WD3", "REVOKED", 100),
    ]
    assert empty == []


# --- authcodetoopenid: MD5 without sign_type, whatever the setting ------------------------------------------------


def raw_call(url: str, params: dict[str, str]) -> dict[str, str]:
    """POST a hand-made request to a WeChat-shaped server; its answer's fields."""
    import httpx

    with httpx.Client(trust_env=False, timeout=5) as http:
        return parse_xml(http.post(url, content=to_xml(params)).content)


def test_the_simulator_takes_authcodetoopenid_signed_md5_only_as_wechat_does(simulator):
    base = {"appid": APPID, "mch_id": MCH_ID, "nonce_str": "n" * 32, "auth_code": code("00", customer="0077")}
    url = f"{simulator.url}/tools/authcodetoopenid"
    hmac_signed = {**base, "sign_type": "HMAC-SHA256"}
    md5_with_type = {**base, "sign_type": "MD5"}
    for refused in (hmac_signed, md5_with_type, base):
        signed = {**refused, "sign": sign(refused, WECHAT_KEY, refused.get("sign_type", "HMAC-SHA256"))}
        if refused is base:  # no sign_type, but a 64-character HMAC-SHA256 sign
            assert len(signed["sign"]) == 64
        assert raw_call(url, signed) == {"return_code": "FAIL", "return_msg": "签名错误"}
    answer = raw_call(url, {**base, "sign": sign(base, WECHAT_KEY, "MD5")})
    assert answer["return_code"] == answer["result_code"] == "SUCCESS"
    assert answer["openid"] == simulator.openid_for(base["auth_code"]) and signature_ok(answer, WECHAT_KEY, "MD5")


@pytest.mark.parametrize("sign_type", ["MD5", "HMAC-SHA256"])
def test_identify_works_with_either_sign_type_setting(simulator, sign_type):
    async def go():
        wechat = client(simulator, sign_type=sign_type)
        try:
            return await wechat.identify(code("00", customer="0078"))
        finally:
            await wechat.aclose()

    assert run(go()) == simulator.openid_for(code("00", customer="0078"))


def test_authcodetoopenid_goes_out_md5_without_sign_type_and_its_answer_is_checked_md5():
    seen: list[dict[str, str]] = []
    answers: list[str] = []
    app = FastAPI()

    @app.post("/tools/authcodetoopenid")
    async def authcodetoopenid(request: Request) -> Response:
        seen.append(parse_xml(await request.body()))
        fields = {
            "return_code": "SUCCESS",
            "appid": APPID,
            "mch_id": MCH_ID,
            "nonce_str": "n2",
            "result_code": "SUCCESS",
            "openid": "oPAYER",
        }
        return Response(to_xml({**fields, "sign": sign(fields, WECHAT_KEY, answers.pop(0))}), media_type="text/xml")

    served = serve_in_thread(app)

    async def go():
        wechat = WeChatPayClient(
            base_url=served.url, appid=APPID, mch_id=MCH_ID, api_key=WECHAT_KEY, sign_type="HMAC-SHA256"
        )
        try:
            answers.append("MD5")
            payer = await wechat.identify("134567890123456789")
            answers.append("HMAC-SHA256")  # the answer of an MD5 call signed otherwise does not verify
            with pytest.raises(ProviderBadResponse, match="signature does not verify"):
                await wechat.identify("134567890123456789")
            return payer
        finally:
            await wechat.aclose()

    try:
        assert run(go()) == "oPAYER"
    finally:
        served.stop()
    request = seen[0]
    assert "sign_type" not in request and len(request["sign"]) == 32
    assert request["sign"] == sign(request, WECHAT_KEY, "MD5")


# --- micropay: spbill_create_ip and time_expire -------------------------------------------------------------------


class SimClock:
    """The simulator's clock: still, until the test moves it."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


T0 = datetime(2026, 11, 23, 2, 0, 0, 250000, tzinfo=UTC)  # 10:00:00.25 in Beijing


@pytest.fixture
def timed():
    """A simulator and a client on one still clock (T0) that the test moves."""
    clock = SimClock(T0)
    sim = WeChatSimulator(appid=APPID, mch_id=MCH_ID, api_key=WECHAT_KEY, clock=clock, userpaying_seconds=120)
    served = serve_in_thread(sim.app())
    sim.url, sim.clock_ = served.url, clock
    yield (
        sim,
        WeChatPayClient(
            base_url=served.url, appid=APPID, mch_id=MCH_ID, api_key=WECHAT_KEY, clock=lambda: T0, timeout=2
        ),
    )
    served.stop()


def expiring(out_trade_no: str, auth_code: str, after: timedelta) -> Charge:
    return Charge(out_trade_no, auth_code, 1234, "演示门店-消费", "S1", "T01", expires_at=T0 + after)


def test_micropay_sends_central_s_address_as_spbill_create_ip(simulator):
    async def go(wechat, out_trade_no):
        try:
            return await wechat.charge(charge(out_trade_no, code("00")))
        finally:
            await wechat.aclose()

    assert run(go(client(simulator, spbill_create_ip="203.0.113.7"), "WIP1")).outcome is Outcome.SUCCESS
    assert simulator.orders["WIP1"].spbill_create_ip == "203.0.113.7"
    assert run(go(client(simulator), "WIP2")).outcome is Outcome.SUCCESS  # not set: 127.0.0.1
    assert simulator.orders["WIP2"].spbill_create_ip == "127.0.0.1"
    for bad in ("::1", "203.0.113", "localhost"):
        with pytest.raises(ValueError, match="IPv4"):
            client(simulator, spbill_create_ip=bad)


def test_micropay_sends_time_expire_no_shorter_than_wechat_allows(timed):
    sim, wechat = timed

    async def go():
        try:
            first = await wechat.charge(expiring("WT1", code("00"), timedelta(seconds=30)))
            second = await wechat.charge(expiring("WT2", code("00"), timedelta(minutes=5)))
            third = await wechat.charge(charge("WT3", code("00")))
            return first, second, third
        finally:
            await wechat.aclose()

    assert [r.outcome for r in run(go())] == [Outcome.SUCCESS] * 3
    # 30 s is under micropay's shortest (a minute after it arrives): a minute and the allowance, rounded up.
    assert sim.orders["WT1"].expires_at == datetime(2026, 11, 23, 10, 1, 11, tzinfo=BEIJING)
    assert sim.orders["WT2"].expires_at == datetime(2026, 11, 23, 10, 5, 1, tzinfo=BEIJING)
    assert sim.orders["WT3"].expires_at is None  # no expiry given, none sent


def test_a_micropay_that_arrives_after_its_expiry_is_refused_and_never_charged(timed):
    sim, wechat = timed
    sim.clock_.advance(11)  # it reaches WeChat 11 s after it was sent: less than a minute of its expiry is left

    async def go():
        try:
            with pytest.raises(ProviderRejected, match="time_expire时间过短"):
                await wechat.charge(expiring("WT4", code("00"), timedelta(seconds=30)))
            return await wechat.query("WT4")
        finally:
            await wechat.aclose()

    assert run(go()).outcome is Outcome.NOT_FOUND and "WT4" not in sim.orders


def test_an_order_still_waiting_when_its_expiry_passes_is_closed(timed):
    sim, wechat = timed

    async def go(step):
        try:
            return await step()
        finally:
            await wechat.aclose()

    # 10: the customer would confirm after 120 s; 12: never. Both orders expire at T0 + 90 s.
    for otn, scenario in (("WT10", "10"), ("WT12", "12")):
        assert (
            run(
                go(
                    lambda otn=otn, scenario=scenario: wechat.charge(
                        expiring(otn, code(scenario), timedelta(seconds=90))
                    )
                )
            ).outcome
            is Outcome.USERPAYING
        )
    sim.clock_.advance(89)
    assert run(go(lambda: wechat.query("WT12"))).outcome is Outcome.USERPAYING
    sim.clock_.advance(61)  # past the expiry, and past the time the customer of WT10 would have confirmed
    for otn in ("WT10", "WT12"):
        closed = run(go(lambda otn=otn: wechat.query(otn)))
        assert (closed.outcome, closed.code) == (Outcome.REVERSED, "CLOSED")
    assert sim.bill_text(T0.astimezone(BEIJING).date()) is None  # nothing was paid
    assert run(go(lambda: wechat.reverse("WT12"))).done
