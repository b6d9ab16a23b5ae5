"""WeChat Pay API v3: request signing by the published rule (a vector derived here with a key pair made in the test),
answer verification by serial (WeChat Pay public key, platform certificate, both while switching), AEAD_AES_256_GCM,
and the client against the wire-level simulator over real HTTP (no database)."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import NameOID

from central.config import Settings
from central.payments.provider import (
    Charge,
    Outcome,
    ProviderBadResponse,
    ProviderRejected,
    ProviderUnreachable,
    RefundOrder,
    RefundStatus,
)
from central.payments.simulators import serve_in_thread
from central.payments.simulators.wechat_v3 import generate_private_key_pem
from central.payments.wechat import WeChatPayClient
from central.payments.wechat_v3 import (
    ResponseVerifier,
    WeChatPayV3Client,
    authorization,
    decrypt_resource,
    encrypt_resource,
    load_certificate,
    load_private_key,
    load_public_key,
    parse_authorization,
    request_message,
    response_message,
    rsa_sign,
)
from tests.support.credentials import APPID, MCH_ID, PHONE_KEY, WECHAT_KEY
from tests.support.wechat_v3 import (
    API_V3_KEY,
    MERCHANT_SERIAL,
    PUBLIC_KEY_ID,
    merchant_key_pem,
    v3_settings,
    v3_simulator,
    wechatpay_key_pem,
)

# 签名生成's worked example: GET /v3/certificates at 1554208460 with this nonce.
SPEC_TIMESTAMP = "1554208460"
SPEC_NONCE = "593BEC0C930BF1AFEB40B4A08C8FB242"


@pytest.fixture(scope="module")
def platform_cert():
    """A platform certificate as WeChat Pay issued them before the public key: (its key PEM, serial, cert PEM)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Tenpay.com Root CA (test)")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(0x5157F09EFDC096DE15EBE81A47057A7232F1B8E1)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return key_pem, "5157F09EFDC096DE15EBE81A47057A7232F1B8E1", cert.public_bytes(serialization.Encoding.PEM).decode()


# --- signing requests ---------------------------------------------------------------------------------------------


def test_the_signed_text_is_the_five_lines_of_the_published_rule():
    # Each line ends in \n, the last (the body) too; a GET has an empty body line.
    assert request_message("GET", "/v3/certificates", SPEC_TIMESTAMP, SPEC_NONCE, b"") == (
        b"GET\n/v3/certificates\n1554208460\n593BEC0C930BF1AFEB40B4A08C8FB242\n\n"
    )
    body = '{"appid":"wx5f3c9a1e7b2d4068","description":"门店消费"}'.encode()
    assert request_message("post", "/v3/pay/transactions/codepay", "1", "N", body) == (
        b"POST\n/v3/pay/transactions/codepay\n1\nN\n" + body + b"\n"
    )
    # The query string is part of the URL that is signed.
    assert b"/v3/pay/transactions/out-trade-no/X1?mchid=1900000109\n" in request_message(
        "GET", "/v3/pay/transactions/out-trade-no/X1?mchid=1900000109", "1", "N", b""
    )


def test_the_authorization_header_names_each_field_and_carries_sha256withrsa_over_the_message():
    key = load_private_key(merchant_key_pem())
    body = json.dumps({"appid": APPID, "mchid": MCH_ID, "amount": {"total": 1, "currency": "CNY"}}).encode()
    header = authorization(
        mchid=MCH_ID,
        serial_no=MERCHANT_SERIAL,
        key=key,
        method="POST",
        url="/v3/pay/transactions/codepay",
        body=body,
        timestamp=SPEC_TIMESTAMP,
        nonce=SPEC_NONCE,
    )
    schema, _, rest = header.partition(" ")
    assert schema == "WECHATPAY2-SHA256-RSA2048"
    pairs = [part.split("=", 1) for part in rest.split(",")]
    assert [name for name, _ in pairs] == ["mchid", "nonce_str", "signature", "timestamp", "serial_no"]
    assert all(value.startswith('"') and value.endswith('"') for _, value in pairs)
    fields = {name: value.strip('"') for name, value in pairs}
    assert fields["mchid"] == MCH_ID and fields["serial_no"] == MERCHANT_SERIAL
    assert fields["timestamp"] == SPEC_TIMESTAMP and fields["nonce_str"] == SPEC_NONCE
    assert parse_authorization(header) == fields

    # The vector, derived from the rule independently of the module: PKCS#1 v1.5 is deterministic, so the
    # signature of the five lines with this key is exactly this.
    message = b"POST\n/v3/pay/transactions/codepay\n1554208460\n593BEC0C930BF1AFEB40B4A08C8FB242\n" + body + b"\n"
    expected = base64.b64encode(key.sign(message, padding.PKCS1v15(), hashes.SHA256())).decode()
    assert fields["signature"] == expected
    key.public_key().verify(base64.b64decode(expected), message, padding.PKCS1v15(), hashes.SHA256())
    # A byte more of body, another second, another nonce: another signature.
    for changed in (
        dict(body=body + b" "),
        dict(timestamp="1554208461"),
        dict(nonce=SPEC_NONCE.lower()),
        dict(url="/v3/pay/transactions/codepay?x=1"),
    ):
        values = dict(
            mchid=MCH_ID,
            serial_no=MERCHANT_SERIAL,
            key=key,
            method="POST",
            url="/v3/pay/transactions/codepay",
            body=body,
            timestamp=SPEC_TIMESTAMP,
            nonce=SPEC_NONCE,
        )
        assert parse_authorization(authorization(**(values | changed)))["signature"] != expected
    assert parse_authorization('WECHATPAY2-SHA256-RSA4096 mchid="1"') is None


# --- verifying answers ------------------------------------------------------------------------------------------------


def signed(key_pem: str, body: bytes, serial: str, at: datetime, nonce: str = "N0NCE") -> dict[str, str]:
    stamp = str(int(at.timestamp()))
    return {
        "Wechatpay-Serial": serial,
        "Wechatpay-Signature": rsa_sign(load_private_key(key_pem), response_message(stamp, nonce, body)),
        "Wechatpay-Timestamp": stamp,
        "Wechatpay-Nonce": nonce,
    }


def test_an_answer_is_checked_with_the_key_its_serial_names_during_a_switch(platform_cert):
    cert_key, cert_serial, cert_pem = platform_cert
    serial, cert_public = load_certificate(cert_pem)
    assert serial == cert_serial  # WeChat writes the certificate's serial number in upper-case hex
    wechatpay_public = load_public_key(wechatpay_public_pem())
    both = ResponseVerifier({PUBLIC_KEY_ID: wechatpay_public, cert_serial: cert_public})
    now = datetime.now(UTC)
    body = b'{"trade_state":"SUCCESS"}'
    both.verify(signed(wechatpay_key_pem(), body, PUBLIC_KEY_ID, now), body, now)  # the new WeChat Pay public key
    both.verify(signed(cert_key, body, cert_serial.lower(), now), body, now)  # the platform certificate
    # Each key only under its own serial.
    with pytest.raises(ProviderBadResponse, match="does not verify"):
        both.verify(signed(cert_key, body, PUBLIC_KEY_ID, now), body, now)
    # A merchant that configured the public key only refuses what the certificate signed.
    only_public = ResponseVerifier({PUBLIC_KEY_ID: wechatpay_public})
    with pytest.raises(ProviderBadResponse, match=f"key {cert_serial}, which is not configured"):
        only_public.verify(signed(cert_key, body, cert_serial, now), body, now)


def test_a_tampered_body_or_timestamp_a_stale_or_unsigned_answer_is_refused():
    verifier = ResponseVerifier({PUBLIC_KEY_ID: load_public_key(wechatpay_public_pem())})
    now = datetime.now(UTC)
    body = b'{"trade_state":"SUCCESS","amount":{"total":1234}}'
    headers = signed(wechatpay_key_pem(), body, PUBLIC_KEY_ID, now)
    verifier.verify(headers, body, now)
    with pytest.raises(ProviderBadResponse, match="does not verify"):
        verifier.verify(headers, body.replace(b"1234", b"1235"), now)
    with pytest.raises(ProviderBadResponse, match="does not verify"):
        verifier.verify(headers | {"Wechatpay-Timestamp": str(int(now.timestamp()) + 1)}, body, now)
    with pytest.raises(ProviderBadResponse, match="does not verify"):
        verifier.verify(headers | {"Wechatpay-Nonce": "OTHER"}, body, now)
    with pytest.raises(ProviderBadResponse, match="not configured"):
        verifier.verify(headers | {"Wechatpay-Serial": "PUB_KEY_ID_0000000000"}, body, now)
    with pytest.raises(ProviderBadResponse, match="not signed"):
        verifier.verify({k: v for k, v in headers.items() if k != "Wechatpay-Signature"}, body, now)
    # Correctly signed, but six minutes old: a replay (or a clock to fix), not an answer to act on.
    old = now - timedelta(minutes=6)
    with pytest.raises(ProviderBadResponse, match="more than 300 s from our clock"):
        verifier.verify(signed(wechatpay_key_pem(), body, PUBLIC_KEY_ID, old), body, now)
    with pytest.raises(ValueError, match="no WeChat Pay public key"):
        ResponseVerifier({})


def wechatpay_public_pem() -> str:
    return (
        load_private_key(wechatpay_key_pem())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


# --- AEAD_AES_256_GCM ----------------------------------------------------------------------------------------------


def test_a_resource_decrypts_with_the_api_v3_key_and_a_changed_one_does_not():
    plaintext = json.dumps(
        {"mchid": MCH_ID, "out_trade_no": "S1T01X", "out_refund_no": "R1", "refund_status": "SUCCESS"}
    ).encode()
    # Made here the way the rule says (AES-256-GCM, the 16-byte tag after the ciphertext, base64), not by the module.
    sealed = AESGCM(API_V3_KEY.encode()).encrypt(b"fdasflkja484", plaintext, b"refund")
    resource = {
        "algorithm": "AEAD_AES_256_GCM",
        "ciphertext": base64.b64encode(sealed).decode(),
        "associated_data": "refund",
        "nonce": "fdasflkja484",
        "original_type": "refund",
    }
    assert decrypt_resource(API_V3_KEY, resource) == plaintext
    assert decrypt_resource(API_V3_KEY, encrypt_resource(API_V3_KEY, plaintext, "transaction")) == plaintext

    flipped = bytearray(sealed)
    flipped[3] ^= 1
    for changed in (
        {"ciphertext": base64.b64encode(bytes(flipped)).decode()},
        {"associated_data": "transaction"},
        {"nonce": "fdasflkja485"},
    ):
        with pytest.raises(ProviderBadResponse, match="does not decrypt"):
            decrypt_resource(API_V3_KEY, resource | changed)
    with pytest.raises(ProviderBadResponse, match="does not decrypt"):
        decrypt_resource("another0api0v3key000000000000000", resource)
    with pytest.raises(ProviderBadResponse, match="unknown resource algorithm"):
        decrypt_resource(API_V3_KEY, resource | {"algorithm": "AEAD_SM4_GCM"})
    with pytest.raises(ValueError, match="32 bytes"):
        decrypt_resource("short", resource)


# --- the client against the simulator over HTTP ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def simulator():
    sim = v3_simulator(userpaying_seconds=0.2, slow_seconds=0.6)
    served = serve_in_thread(sim.app())
    sim.url = served.url
    yield sim
    served.stop()


def client(simulator, keys: dict | None = None, **overrides) -> WeChatPayV3Client:
    values = dict(
        base_url=simulator.url,
        appid=APPID,
        mchid=MCH_ID,
        merchant_serial_no=MERCHANT_SERIAL,
        private_key=load_private_key(merchant_key_pem()),
        verifier=ResponseVerifier(keys or {PUBLIC_KEY_ID: load_public_key(wechatpay_public_pem())}),
        api_v3_key=API_V3_KEY,
        v2=WeChatPayClient(base_url=simulator.url, appid=APPID, mch_id=MCH_ID, api_key=WECHAT_KEY, timeout=0.3),
        timeout=0.3,
    )
    return WeChatPayV3Client(**(values | overrides))


_serial = iter(range(1, 10**9))


def code(scenario: str, customer: str = "0001") -> str:
    return f"13{customer}{next(_serial):010d}{scenario}"


def charge(out_trade_no: str, auth_code: str, amount: int = 1234, device_ip: str | None = "192.0.2.15") -> Charge:
    return Charge(out_trade_no, auth_code, amount, "演示门店-消费", "S1", "T01", device_ip=device_ip)


def with_client(simulator, body, **options):
    async def go():
        wechat = client(simulator, **options)
        try:
            return await body(wechat)
        finally:
            await wechat.aclose()

    return asyncio.run(go())


def test_codepay_paid_reports_the_store_station_and_device_address(simulator):
    payer = code("00", customer="0042")

    async def body(wechat):
        return await wechat.charge(charge("V3PAID1", payer)), await wechat.query("V3PAID1")

    paid, queried = with_client(simulator, body)
    assert paid.outcome is Outcome.SUCCESS and paid.code == "SUCCESS" and paid.amount_fen == 1234
    assert paid.provider_trade_no and paid.payer_id == simulator.openid_for(payer)
    assert paid.paid_at is not None and paid.paid_at.tzinfo is not None
    assert queried.outcome is Outcome.SUCCESS and queried.provider_trade_no == paid.provider_trade_no
    assert simulator.scenes["V3PAID1"] == {
        "device_id": "S1-T01",
        "device_ip": "192.0.2.15",
        "store_info": {"out_id": "S1"},
    }
    assert simulator.count("codepay", "V3PAID1") == 1 and simulator.count("micropay") == 0


def test_userpaying_is_a_202_to_follow_then_paid_or_cancelled(simulator):
    async def body(wechat):
        waiting = await wechat.charge(charge("V3WAIT10", code("10")))
        cancelling = await wechat.charge(charge("V3WAIT11", code("11")))
        early = await wechat.query("V3WAIT10")
        await asyncio.sleep(0.3)  # past the simulated customer's 0.2 s
        return waiting, cancelling, early, await wechat.query("V3WAIT10"), await wechat.query("V3WAIT11")

    waiting, cancelling, early, paid, cancelled = with_client(simulator, body)
    assert (waiting.outcome, waiting.code) == (Outcome.USERPAYING, "USERPAYING") and "密码" in waiting.reason_zh
    assert cancelling.outcome is Outcome.USERPAYING and early.outcome is Outcome.USERPAYING
    assert paid.outcome is Outcome.SUCCESS and paid.provider_trade_no
    assert (cancelled.outcome, cancelled.code) == (Outcome.FAILED, "PAYERROR") and "取消" in cancelled.reason_zh


@pytest.mark.parametrize(
    ("scenario", "outcome", "error", "zh_part"),
    [
        ("20", Outcome.UNKNOWN, "SYSTEM_ERROR", "确认"),
        ("21", Outcome.UNKNOWN, "BANK_ERROR", "确认"),
        ("30", Outcome.FAILED, "AUTH_CODE_EXPIRE", "过期"),
        ("31", Outcome.FAILED, "AUTH_CODE_INVALID", "无效"),
        ("32", Outcome.FAILED, "NOT_ENOUGH", "余额不足"),
    ],
)
def test_codepay_error_codes_map_onto_the_gateway_s_outcomes(simulator, scenario, outcome, error, zh_part):
    result = with_client(simulator, lambda wechat: wechat.charge(charge(f"V3E{scenario}", code(scenario))))
    assert (result.outcome, result.code) == (outcome, error)
    assert zh_part in result.reason_zh and result.reason_en


def test_a_lost_timed_out_or_forged_answer_is_an_error_never_an_outcome_and_the_query_settles_it(simulator):
    async def body(wechat):
        with pytest.raises(ProviderBadResponse, match="signature does not verify"):
            await wechat.charge(charge("V3B51", code("51")))
        with pytest.raises(ProviderBadResponse, match="not signed"):
            await wechat.charge(charge("V3B52", code("52")))
        with pytest.raises(ProviderUnreachable, match="may have been processed"):
            await wechat.charge(charge("V3B50", code("50")))
        simulator.charge_faults = 1
        with pytest.raises(ProviderBadResponse, match="not signed"):
            await wechat.charge(charge("V3B12", code("12")))  # a proxy's 502 page: processed, customer on it
        return [(await wechat.query(o)).outcome for o in ("V3B51", "V3B52", "V3B50", "V3B12")]

    assert with_client(simulator, body) == [Outcome.SUCCESS] * 3 + [Outcome.USERPAYING]
    assert simulator.count("codepay", "V3B50") == 1  # one charge each, however the answer went


def test_reverse_is_retried_through_a_5xx_and_done_once_confirmed(simulator):
    async def body(wechat):
        await wechat.charge(charge("V3R40", code("40")))
        first, second = await wechat.reverse("V3R40"), await wechat.reverse("V3R40")
        unknown = await wechat.reverse("V3R-NEVER-SEEN")
        return first, second, unknown

    first, second, unknown = with_client(simulator, body)
    assert (first.done, first.recall, first.code) == (False, False, "SYSTEM_ERROR")  # v3 has no recall flag
    assert second.done and simulator.orders["V3R40"].state == "REVOKED"
    assert unknown.done and unknown.code == "ORDER_NOT_EXIST"  # never charged: nothing to give back


def test_a_request_signed_with_another_key_is_refused_before_processing(simulator):
    async def body(wechat):
        return await wechat.charge(charge("V3KEY1", code("00")))

    with pytest.raises(ProviderRejected, match="HTTP 401.*SIGN_ERROR"):
        with_client(simulator, body, private_key=load_private_key(generate_private_key_pem()))
    with pytest.raises(ProviderRejected, match="SIGN_ERROR"):
        with_client(simulator, body, merchant_serial_no="ABCDEF")
    assert "V3KEY1" not in simulator.orders


def test_the_client_follows_wechat_pay_switching_from_a_platform_certificate_to_the_public_key(platform_cert):
    cert_key, cert_serial, cert_pem = platform_cert
    sim = v3_simulator()
    sim.sign_with(cert_key, cert_serial)  # before the switch: answers signed with the platform certificate
    served = serve_in_thread(sim.app())
    sim.url = served.url
    public = load_public_key(wechatpay_public_pem())
    both = {PUBLIC_KEY_ID: public, load_certificate(cert_pem)[0]: load_certificate(cert_pem)[1]}
    try:
        before = with_client(sim, lambda w: w.charge(charge("V3SW1", code("00"))), keys=both)
        sim.sign_with(wechatpay_key_pem(), PUBLIC_KEY_ID)  # WeChat Pay moves the merchant to its public key
        after = with_client(sim, lambda w: w.query("V3SW1"), keys=both)
        with pytest.raises(ProviderBadResponse, match="not configured"):
            with_client(sim, lambda w: w.query("V3SW1"), keys={cert_serial: load_certificate(cert_pem)[1]})
    finally:
        served.stop()
    assert before.outcome is Outcome.SUCCESS and after.outcome is Outcome.SUCCESS


def test_identify_goes_through_v2_authcodetoopenid_with_the_v2_key(simulator):
    payer = code("00", customer="0077")
    before = simulator.count("authcodetoopenid")
    openid = with_client(simulator, lambda wechat: wechat.identify(payer))
    expired = with_client(simulator, lambda wechat: wechat.identify(code("30")))
    assert openid == simulator.openid_for(payer) and expired is None
    assert simulator.count("authcodetoopenid") == before + 2


def test_a_refund_is_processing_then_success_and_an_unknown_one_is_not_found(simulator):
    async def body(wechat):
        await wechat.charge(charge("V3RF1", code("00"), amount=1000))
        accepted = await wechat.refund(RefundOrder("V3RF1", "V3RF1-R1", 1000, 400, reason="退货"))
        again = await wechat.refund(RefundOrder("V3RF1", "V3RF1-R1", 1000, 400))
        too_much = await wechat.refund(RefundOrder("V3RF1", "V3RF1-R2", 1000, 700))
        simulator.refunds["V3RF1-R1"].created_at -= timedelta(seconds=simulator.refund_seconds)
        settled = await wechat.refund_query("V3RF1", "V3RF1-R1")
        missing = await wechat.refund_query("V3RF1", "V3RF1-NONE")
        return accepted, again, too_much, settled, missing

    accepted, again, too_much, settled, missing = with_client(simulator, body)
    assert accepted.status is RefundStatus.PROCESSING and accepted.amount_fen == 400 and accepted.provider_refund_no
    assert again.provider_refund_no == accepted.provider_refund_no  # the same refund, never a second
    assert (
        too_much.status is RefundStatus.FAILED and too_much.code == "INVALID_REQUEST" and "可退" in too_much.reason_zh
    )
    assert settled.status is RefundStatus.SUCCESS and settled.refunded_at is not None
    assert missing.status is RefundStatus.NOT_FOUND
    assert simulator.refunded_fen("V3RF1") == 400


@pytest.mark.parametrize(
    ("scenario", "status", "error"),
    [("61", RefundStatus.UNKNOWN, "SYSTEM_ERROR"), ("62", RefundStatus.FAILED, "NOT_ENOUGH")],
)
def test_refund_errors_map_onto_refund_outcomes(simulator, scenario, status, error):
    async def body(wechat):
        await wechat.charge(charge(f"V3RE{scenario}", code(scenario), amount=500))
        return await wechat.refund(RefundOrder(f"V3RE{scenario}", f"V3RE{scenario}-R", 500, 500))

    result = with_client(simulator, body)
    assert (result.status, result.code) == (status, error)


def test_from_settings_reads_the_keys_and_the_serial_of_a_platform_certificate(tmp_path, platform_cert):
    _key, cert_serial, cert_pem = platform_cert
    (tmp_path / "platform.pem").write_text(cert_pem)
    values = dict(
        phone_hash_key=PHONE_KEY,
        environment="development",
        wechat_base_url="http://127.0.0.1:9",
        wechat_appid=APPID,
        wechat_mch_id=MCH_ID,
        wechat_api_key=WECHAT_KEY,
        **v3_settings(tmp_path),
    )
    wechat = WeChatPayV3Client.from_settings(
        Settings(**(values | {"wechat_platform_cert_path": tmp_path / "platform.pem"}))
    )
    assert set(wechat.verifier.keys) == {PUBLIC_KEY_ID, cert_serial}
    assert wechat.merchant_serial_no == MERCHANT_SERIAL and wechat.payer_id_kind == f"openid:{APPID}"
    (tmp_path / "apiclient_key.pem").write_text("not a key")
    with pytest.raises(ValueError, match="not an unencrypted PEM private key"):
        WeChatPayV3Client.from_settings(Settings(**values))
    with pytest.raises(ValueError, match="needs a key to check WeChat Pay's answers"):
        Settings(**(values | {"wechat_pay_public_key_path": None, "wechat_pay_public_key_id": None}))
    with pytest.raises(ValueError, match="wechat_api_v3_key must be 32 characters"):
        Settings(**(values | {"wechat_api_v3_key": "short"}))
