"""WeChat Pay API v3 (JSON, RSA) for code payment: codepay, query by out_trade_no, reverse, and refunds
(`/v3/refund/domestic/refunds`, its query). Pay-as-member identification (`tools/authcodetoopenid`) and the
settlement bill (`pay/downloadbill`) exist in API v2 only: this client hands them to a v2 client (the merchant's v2
API key), so a v3 merchant still identifies the payer before charging and reconciles the day's bill.

Written against WeChat's published v3 rules (pay.weixin.qq.com/doc/v3/merchant: 签名生成, 签名验证, 证书和回调报文解密;
付款码支付 /v3/pay/transactions/codepay of 2024), not an SDK.

Signing (签名生成): every request carries
`Authorization: WECHATPAY2-SHA256-RSA2048 mchid="…",nonce_str="…",signature="…",timestamp="…",serial_no="…"`, the
signature being SHA256withRSA (PKCS#1 v1.5) with the merchant's API private key, base64, over five lines each ended
by `\\n`: the method, the URL's path and query, the Unix timestamp, the nonce, the body (empty for GET).

Verifying (签名验证): every answer is signed by WeChat Pay over `Wechatpay-Timestamp\\n Wechatpay-Nonce\\n body\\n`,
the key named by `Wechatpay-Serial`: the WeChat Pay public key (serial `PUB_KEY_ID_…`, merchants since late 2024) or
a platform certificate (the certificate's serial number). Both may be configured at once while a merchant switches
from one to the other; an answer is checked with the key its serial names, and one signed by a key not configured,
not signed, signed badly or stamped more than five minutes from our clock is a ProviderBadResponse: central never
acts on an answer it cannot verify, it asks again (query) instead.

Answers: 200 with the transaction; 202 (code payment only) with `trade_state` USERPAYING: the customer confirms on
the phone, follow it by query; 204 No Content; 4xx/5xx with `{"code": …, "message": …}`. As with v2, only codes
that prove nothing was charged are FAILED (NOT_ENOUGH, AUTH_CODE_EXPIRE, PARAM_ERROR…); SYSTEM_ERROR, BANK_ERROR,
an unknown code, a timeout or a body that is not the protocol are UNKNOWN and settled by query. A 401 (WeChat could
not verify our signature) is a refusal before any processing (ProviderRejected): the gateway closes the order by a
reverse all the same.

The codepay request has no expiry field (v2's `time_expire`): WeChat does not close a v3 code payment when central
gives up; the gateway's reverse after its limit does (docs/PAYMENTS.md).

AEAD_AES_256_GCM (`decrypt_resource`): the `resource` of notifications and of the certificate download is encrypted
with the merchant's API v3 key (32 bytes), the `nonce` and `associated_data` given next to the ciphertext.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from central.payments.provider import (
    BillRow,
    Charge,
    Outcome,
    ProviderBadResponse,
    ProviderRejected,
    ProviderUnreachable,
    RefundOrder,
    RefundResult,
    RefundStatus,
    Result,
    ReverseResult,
)
from central.payments.wechat import (
    _CONFIRMING,
    _FIX_CONFIG,
    _REFUND_CONFIRMING,
    _REFUND_FIX_CONFIG,
    ERROR_CODES,
    REFUND_ERROR_CODES,
    REFUND_STATUSES,
    TRADE_STATES,
    Meaning,
    RefundMeaning,
    WeChatPayClient,
    _truncate_utf8,
)

if TYPE_CHECKING:
    from central.config import Settings

log = logging.getLogger(__name__)

AUTH_SCHEMA = "WECHATPAY2-SHA256-RSA2048"
# The Brand API (品牌API, /brand/...) signs the same way under its own schema, naming the brand instead of the merchant.
BRAND_AUTH_SCHEMA = "WECHATPAY-BRAND-SHA256-RSA2048"
# codepay's `attach` (商户数据包) is string(128); WeChat Pay answers it unchanged in the order's query.
ATTACH_MAX = 128
# An answer stamped further than this from our clock is refused (a replay, or a clock to fix); WeChat's SDKs use 5 min.
MAX_CLOCK_SKEW_SECONDS = 300
API_V3_KEY_BYTES = 32
PUBLIC_KEY_ID = re.compile(r"^PUB_KEY_ID_[0-9A-Za-z_]+$")
SERIAL_NO = re.compile(r"^[0-9A-Fa-f]{1,64}$")
_AUTH_FIELD = re.compile(r'(\w+)="([^"]*)"')


# --- keys -------------------------------------------------------------------------------------------------------


def load_private_key(pem: bytes | str) -> rsa.RSAPrivateKey:
    """An RSA private key from PEM (the merchant's `apiclient_key.pem`, PKCS#8 or PKCS#1)."""
    data = pem.encode("ascii") if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("not an RSA private key (WeChat Pay API v3 signs with RSA 2048)")
    return key


def load_public_key(pem: bytes | str) -> rsa.RSAPublicKey:
    """An RSA public key from PEM (`pub_key.pem`, the WeChat Pay public key downloaded from the merchant platform)."""
    data = pem.encode("ascii") if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a PEM public key ({exc})") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("not an RSA public key")
    return key


def load_certificate(pem: bytes | str) -> tuple[str, rsa.RSAPublicKey]:
    """A platform certificate (PEM): its serial number as WeChat writes it (upper-case hex) and its public key."""
    data = pem.encode("ascii") if isinstance(pem, str) else pem
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise ValueError(f"not a PEM certificate ({exc})") from None
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("the certificate's key is not RSA")
    return format(cert.serial_number, "X"), key


def public_pem(key: rsa.RSAPrivateKey | rsa.RSAPublicKey) -> str:
    public = key.public_key() if isinstance(key, rsa.RSAPrivateKey) else key
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


# --- signing and verifying --------------------------------------------------------------------------------------


def request_message(method: str, url: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    """What a request's signature covers: method, URL (path and query), timestamp, nonce, body, each line ended by
    `\\n` (the body's too, empty for a GET)."""
    return b"".join(
        part + b"\n" for part in (method.upper().encode(), url.encode(), timestamp.encode(), nonce.encode(), body)
    )


def response_message(timestamp: str, nonce: str, body: bytes) -> bytes:
    """What an answer's (or a notification's) signature covers: timestamp, nonce, body, each line ended by `\\n`."""
    return timestamp.encode() + b"\n" + nonce.encode() + b"\n" + body + b"\n"


def rsa_sign(key: rsa.RSAPrivateKey, message: bytes) -> str:
    """SHA256withRSA (PKCS#1 v1.5), base64."""
    return base64.b64encode(key.sign(message, padding.PKCS1v15(), hashes.SHA256())).decode("ascii")


def rsa_verify(key: rsa.RSAPublicKey, message: bytes, signature: str) -> bool:
    try:
        raw = base64.b64decode(signature, validate=True)
    except ValueError:
        return False
    try:
        key.verify(raw, message, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


def authorization(
    *,
    mchid: str,
    serial_no: str,
    key: rsa.RSAPrivateKey,
    method: str,
    url: str,
    body: bytes,
    timestamp: str | None = None,
    nonce: str | None = None,
    schema: str = AUTH_SCHEMA,
    who: str = "mchid",
) -> str:
    """The `Authorization` header of a request (签名生成). The Brand API's: `schema=BRAND_AUTH_SCHEMA`,
    `who="brand_id"` and the brand id as `mchid`."""
    timestamp = timestamp or str(int(time.time()))
    nonce = nonce or secrets.token_hex(16).upper()
    signature = rsa_sign(key, request_message(method, url, timestamp, nonce, body))
    return (
        f'{schema} {who}="{mchid}",nonce_str="{nonce}",signature="{signature}",'
        f'timestamp="{timestamp}",serial_no="{serial_no}"'
    )


def parse_authorization(header: str, schema: str = AUTH_SCHEMA) -> dict[str, str] | None:
    """The fields of an `Authorization` header of `schema` (WECHATPAY2-SHA256-RSA2048 unless said), or None for
    another schema."""
    found, _, rest = header.strip().partition(" ")
    if found != schema:
        return None
    return dict(_AUTH_FIELD.findall(rest))


class ResponseVerifier:
    """The WeChat Pay keys an answer may be signed with, by serial: the WeChat Pay public key under its
    `PUB_KEY_ID_…`, a platform certificate under its serial number, or both while a merchant switches."""

    def __init__(self, keys: Mapping[str, rsa.RSAPublicKey], max_skew: float = MAX_CLOCK_SKEW_SECONDS):
        if not keys:
            raise ValueError("no WeChat Pay public key or platform certificate to verify answers with")
        self.keys = {serial.upper(): key for serial, key in keys.items()}
        self.max_skew = max_skew

    def verify(self, headers: Mapping[str, str], body: bytes, now: datetime, what: str = "the answer") -> None:
        """Raise ProviderBadResponse unless `body` is signed by one of our keys within the clock skew."""
        serial = headers.get("Wechatpay-Serial", "")
        signature = headers.get("Wechatpay-Signature", "")
        stamp = headers.get("Wechatpay-Timestamp", "")
        nonce = headers.get("Wechatpay-Nonce", "")
        if not (serial and signature and stamp and nonce):
            raise ProviderBadResponse(f"{what} is not signed (Wechatpay-Signature headers missing)")
        key = self.keys.get(serial.upper())
        if key is None:
            raise ProviderBadResponse(
                f"{what} is signed with key {serial}, which is not configured (known: {', '.join(sorted(self.keys))})"
            )
        try:
            at = int(stamp)
        except ValueError:
            raise ProviderBadResponse(f"{what}: Wechatpay-Timestamp {stamp!r} is not a Unix time") from None
        if abs(now.timestamp() - at) > self.max_skew:
            raise ProviderBadResponse(
                f"{what} is stamped {at}, more than {self.max_skew:g} s from our clock ({int(now.timestamp())}): "
                "a replay, or a clock to set right"
            )
        if not rsa_verify(key, response_message(stamp, nonce, body), signature):
            raise ProviderBadResponse(f"{what}: its signature does not verify (key {serial})")


# --- AEAD_AES_256_GCM ---------------------------------------------------------------------------------------------


def api_v3_key_bytes(key: str | bytes) -> bytes:
    data = key.encode("utf-8") if isinstance(key, str) else key
    if len(data) != API_V3_KEY_BYTES:
        raise ValueError(f"the API v3 key is {API_V3_KEY_BYTES} bytes (32 characters), not {len(data)}")
    return data


def decrypt_resource(api_v3_key: str | bytes, resource: Mapping[str, Any]) -> bytes:
    """The plaintext of an encrypted `resource` (a notification's, a downloaded certificate's): AEAD_AES_256_GCM
    with the API v3 key, its `nonce` and `associated_data`; ciphertext is base64 with the 16-byte tag at its end.
    ProviderBadResponse when it is not that algorithm, or it was changed (the tag does not verify)."""
    algorithm = resource.get("algorithm")
    if algorithm != "AEAD_AES_256_GCM":
        raise ProviderBadResponse(f"unknown resource algorithm {algorithm!r}; AEAD_AES_256_GCM expected")
    try:
        ciphertext = base64.b64decode(str(resource["ciphertext"]), validate=True)
        nonce = str(resource["nonce"]).encode("utf-8")
    except (KeyError, ValueError) as exc:
        raise ProviderBadResponse(f"the resource lacks a readable ciphertext or nonce ({exc})") from None
    associated = str(resource.get("associated_data") or "").encode("utf-8")
    try:
        return AESGCM(api_v3_key_bytes(api_v3_key)).decrypt(nonce, ciphertext, associated)
    except InvalidTag:
        raise ProviderBadResponse(
            "the resource does not decrypt with our API v3 key (changed on the way, or another key)"
        ) from None


def encrypt_resource(
    api_v3_key: str | bytes, plaintext: bytes, associated_data: str = "", nonce: str | None = None
) -> dict[str, str]:
    """The `resource` WeChat Pay would send for `plaintext` (for the simulator and tests)."""
    nonce = nonce or secrets.token_hex(6)  # 12 characters, as WeChat's nonces are
    sealed = AESGCM(api_v3_key_bytes(api_v3_key)).encrypt(nonce.encode(), plaintext, associated_data.encode())
    return {
        "algorithm": "AEAD_AES_256_GCM",
        "ciphertext": base64.b64encode(sealed).decode("ascii"),
        "associated_data": associated_data,
        "nonce": nonce,
    }


# --- what v3's codes mean -----------------------------------------------------------------------------------------

# `code` of a failed codepay (4xx/5xx) → what it means for the sale; v3 spells v2's err_codes with underscores.
# A code not listed is UNKNOWN: the gateway queries, which is always safe.
ERROR_CODES_V3: dict[str, Meaning] = {
    "USERPAYING": ERROR_CODES["USERPAYING"],
    "SYSTEM_ERROR": _CONFIRMING,
    "BANK_ERROR": _CONFIRMING,
    "FREQUENCY_LIMITED": _CONFIRMING,
    "ORDER_PAID": ERROR_CODES["ORDERPAID"],
    "OUT_TRADE_NO_USED": ERROR_CODES["OUT_TRADE_NO_USED"],
    "AUTH_CODE_EXPIRE": ERROR_CODES["AUTHCODEEXPIRE"],
    "AUTH_CODE_INVALID": ERROR_CODES["AUTH_CODE_INVALID"],
    "AUTH_CODE_ERROR": ERROR_CODES["AUTH_CODE_ERROR"],
    "NOT_ENOUGH": ERROR_CODES["NOTENOUGH"],
    "NOT_SUPPORT_CARD": ERROR_CODES["NOTSUPORTCARD"],
    "BUYER_MISMATCH": ERROR_CODES["BUYER_MISMATCH"],
    "TRADE_ERROR": ERROR_CODES["TRADE_ERROR"],
    "ACCOUNT_ERROR": Meaning(
        Outcome.FAILED,
        "顾客的微信支付账户异常，请更换付款方式",
        "The payer's WeChat Pay account cannot pay; pay another way",
    ),
    "NO_AUTH": ERROR_CODES["NOAUTH"],
    "ORDER_CLOSED": ERROR_CODES["ORDERCLOSED"],
    "ORDER_REVERSED": ERROR_CODES["ORDERREVERSED"],
    **{
        code: _FIX_CONFIG
        for code in ("PARAM_ERROR", "INVALID_REQUEST", "APPID_MCHID_NOT_MATCH", "MCH_NOT_EXISTS", "SIGN_ERROR")
    },
}

REFUND_ERROR_CODES_V3: dict[str, RefundMeaning] = {
    **{code: _REFUND_CONFIRMING for code in ("SYSTEM_ERROR", "BIZ_ERR_NEED_RETRY", "FREQUENCY_LIMITED")},
    "NOT_ENOUGH": REFUND_ERROR_CODES["NOTENOUGH"],
    "USER_ACCOUNT_ABNORMAL": REFUND_ERROR_CODES["USER_ACCOUNT_ABNORMAL"],
    "ORDER_NOT_EXIST": REFUND_ERROR_CODES["ORDERNOTEXIST"],
    "RESOURCE_NOT_EXISTS": REFUND_ERROR_CODES["ORDERNOTEXIST"],
    "INVALID_REQUEST": REFUND_ERROR_CODES["INVALID_REQUEST"],
    **{
        code: _REFUND_FIX_CONFIG
        for code in ("PARAM_ERROR", "APPID_MCHID_NOT_MATCH", "MCH_NOT_EXISTS", "NO_AUTH", "SIGN_ERROR")
    },
}

# `status` of a v3 refund. ABNORMAL is v2's CHANGE: the money could not go back the way it came.
REFUND_STATUSES_V3: dict[str, RefundMeaning] = {
    "SUCCESS": REFUND_STATUSES["SUCCESS"],
    "PROCESSING": REFUND_STATUSES["PROCESSING"],
    "ABNORMAL": REFUND_STATUSES["CHANGE"],
    "CLOSED": REFUND_STATUSES["REFUNDCLOSE"],
}

NOT_FOUND_CODES = frozenset({"ORDER_NOT_EXIST", "ORDERNOTEXIST", "RESOURCE_NOT_EXISTS", "NOT_FOUND"})


def parse_time(text: object) -> datetime | None:
    """An RFC 3339 time (`2018-06-08T10:34:56+08:00`) → aware UTC."""
    if not text:
        return None
    try:
        at = datetime.fromisoformat(str(text))
    except ValueError:
        raise ProviderBadResponse(f"{text!r} is not an RFC 3339 time") from None
    if at.tzinfo is None:
        raise ProviderBadResponse(f"{text!r} has no time zone")
    return at.astimezone(UTC)


def _fen(value: object, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ProviderBadResponse(f"{what} {value!r} is not a whole number of fen")
    return value


@dataclass(frozen=True)
class Answer:
    """A verified answer: its HTTP status and JSON body ({} for 204)."""

    status: int
    body: dict[str, Any]

    @property
    def code(self) -> str | None:
        value = self.body.get("code")
        return str(value) if value else None

    @property
    def message(self) -> str:
        return str(self.body.get("message") or "")


# --- the client -----------------------------------------------------------------------------------------------


class LoopClients:
    """One HTTP client per event loop, for the WeChat Pay clients (v3, the Brand API): a client's connections belong
    to the loop that opened them, so a new loop (a restart) gets a new client and closed loops' clients go."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self._clients: dict[asyncio.AbstractEventLoop, httpx.AsyncClient] = {}

    def get(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            for old in [other for other in self._clients if other.is_closed()]:
                del self._clients[old]
            client = httpx.AsyncClient(timeout=self.timeout, trust_env=False)
            self._clients[loop] = client
        return client

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()


class WeChatPayV3Client:
    """A `Provider` speaking WeChat Pay API v3 to `base_url` (https://api.mch.weixin.qq.com, or a simulator), with
    `identify` and `bill` through the v2 client `v2` (same merchant, its v2 API key)."""

    name: Literal["wechat"] = "wechat"

    def __init__(
        self,
        *,
        base_url: str,
        appid: str,
        mchid: str,
        merchant_serial_no: str,
        private_key: rsa.RSAPrivateKey,
        verifier: ResponseVerifier,
        api_v3_key: str | bytes,
        v2: WeChatPayClient,
        timeout: float = 10.0,
        clock: Callable[[], datetime] | None = None,
    ):
        if not SERIAL_NO.match(merchant_serial_no):
            raise ValueError(f"the merchant certificate's serial number is hex, not {merchant_serial_no!r}")
        self.base_url = base_url.rstrip("/")
        self._prefix = urlsplit(self.base_url).path  # signed with the path, as the server sees it
        self.appid = appid
        self.mchid = mchid
        self.merchant_serial_no = merchant_serial_no.upper()
        self._key = private_key
        self.verifier = verifier
        self._api_v3_key = api_v3_key_bytes(api_v3_key)
        self.v2 = v2
        self.timeout = timeout
        self._clock = clock or (lambda: datetime.now(UTC))
        self._clients = LoopClients(timeout)

    @classmethod
    def from_settings(cls, settings: Settings) -> WeChatPayV3Client:
        """From central's settings; ValueError (stopping the service at start) when a key file cannot be used."""
        key_path = settings.wechat_v3_private_key_path or settings.wechat_key_path
        if key_path is None:
            raise ValueError("wechat_api = v3 needs the merchant API private key (wechat_v3_private_key_path)")
        private_key = load_private_key(_read(key_path, "the merchant API private key"))
        serial = settings.wechat_merchant_serial_no
        if serial is None and settings.wechat_cert_path is not None:
            serial, _ = load_certificate(_read(settings.wechat_cert_path, "the merchant API certificate"))
        if serial is None:
            raise ValueError("wechat_api = v3 needs wechat_merchant_serial_no (the merchant API certificate's serial)")
        keys: dict[str, rsa.RSAPublicKey] = {}
        if settings.wechat_pay_public_key_path is not None and settings.wechat_pay_public_key_id:
            keys[settings.wechat_pay_public_key_id] = load_public_key(
                _read(settings.wechat_pay_public_key_path, "the WeChat Pay public key")
            )
        if settings.wechat_platform_cert_path is not None:
            cert_serial, cert_key = load_certificate(
                _read(settings.wechat_platform_cert_path, "the WeChat Pay platform certificate")
            )
            keys[cert_serial] = cert_key
        if settings.wechat_api_v3_key is None:
            raise ValueError("wechat_api = v3 needs wechat_api_v3_key (POS_CENTRAL_WECHAT_API_V3_KEY)")
        return cls(
            base_url=settings.wechat_base_url or "",
            appid=settings.wechat_appid or "",
            mchid=settings.wechat_mch_id or "",
            merchant_serial_no=serial,
            private_key=private_key,
            verifier=ResponseVerifier(keys),
            api_v3_key=settings.wechat_api_v3_key.get_secret_value(),
            v2=WeChatPayClient.from_settings(settings),
            timeout=settings.wechat_timeout_seconds,
        )

    @property
    def payer_id_kind(self) -> str:
        """The member identifier kind a payer id of this provider is stored under (central.identity)."""
        return f"openid:{self.appid}"

    def decrypt(self, resource: Mapping[str, Any]) -> bytes:
        """A notification's (or a downloaded certificate's) `resource`, decrypted with our API v3 key."""
        return decrypt_resource(self._api_v3_key, resource)

    # -- Provider --

    async def charge(self, charge: Charge) -> Result:
        scene: dict[str, Any] = {
            "device_id": f"{charge.store_id}-{charge.station_id}"[:32],
            "store_info": {"out_id": charge.store_id[:32]},
        }
        if charge.device_ip and _is_ip(charge.device_ip):
            scene["device_ip"] = charge.device_ip
        body = {
            "appid": self.appid,
            "mchid": self.mchid,
            "description": _truncate_utf8(charge.description or "门店消费", 127),
            "out_trade_no": charge.out_trade_no,
            "payer": {"auth_code": charge.auth_code},
            "amount": {"total": charge.amount_fen, "currency": "CNY"},
            "scene_info": scene,
        }
        if charge.attach and len(charge.attach) <= ATTACH_MAX and charge.attach.isascii():
            body["attach"] = charge.attach
        elif charge.attach:
            # Never cut (a cut one would carry a wrong member card code), never a reason not to charge: left out.
            # The settings are checked at start so that this does not happen.
            log.error(
                "codepay %s: attach of %d characters left out (at most %d ASCII)",
                charge.out_trade_no,
                len(charge.attach),
                ATTACH_MAX,
            )
        answer = await self._call("POST", "/v3/pay/transactions/codepay", body)
        if answer.status == 200:
            return self._transaction(answer.body, charge.out_trade_no)
        if answer.status == 202 or answer.code == "USERPAYING":
            found = ERROR_CODES_V3["USERPAYING"]
            return Result(
                Outcome.USERPAYING, charge.out_trade_no, code="USERPAYING", reason_zh=found.zh, reason_en=found.en
            )
        code = answer.code
        listed = ERROR_CODES_V3.get(code or "")
        found = listed or _CONFIRMING
        if listed is None or (answer.status >= 500 and listed.outcome in (Outcome.FAILED, Outcome.REVERSED)):
            # A 5xx never proves the order failed or closed, whatever its code says.
            log.warning(
                "codepay %s: HTTP %d %s (%s); querying", charge.out_trade_no, answer.status, code, answer.message
            )
            found = _CONFIRMING
        return Result(found.outcome, charge.out_trade_no, code=code, reason_zh=found.zh, reason_en=found.en)

    async def query(self, out_trade_no: str) -> Result:
        answer = await self._call("GET", f"/v3/pay/transactions/out-trade-no/{out_trade_no}?mchid={self.mchid}")
        if answer.status != 200:
            if answer.status == 404 and answer.code in NOT_FOUND_CODES:
                return Result(
                    Outcome.NOT_FOUND,
                    out_trade_no,
                    code=answer.code,
                    reason_zh="微信支付无此订单",
                    reason_en="WeChat Pay has no such order",
                )
            return Result(
                Outcome.UNKNOWN, out_trade_no, code=answer.code, reason_zh=_CONFIRMING.zh, reason_en=_CONFIRMING.en
            )
        return self._transaction(answer.body, out_trade_no)

    async def reverse(self, out_trade_no: str) -> ReverseResult:
        answer = await self._call(
            "POST",
            f"/v3/pay/transactions/out-trade-no/{out_trade_no}/reverse",
            {"appid": self.appid, "mchid": self.mchid},
        )
        if answer.status in (200, 204):
            theirs = answer.body.get("out_trade_no")
            if theirs and theirs != out_trade_no:
                raise ProviderBadResponse(f"reverse: the answer is for order {theirs}, not {out_trade_no}")
            return ReverseResult(done=True, recall=False)
        code = answer.code
        if code in NOT_FOUND_CODES or code in ("ORDER_REVERSED", "ORDER_CLOSED"):
            return ReverseResult(done=True, recall=False, code=code)  # nothing charged, or already given back
        # v3 has no recall flag: a 5xx says "the same again, later"; the gateway backs off and calls again.
        return ReverseResult(done=False, recall=False, code=code)

    async def identify(self, auth_code: str) -> str | None:
        """authcodetoopenid exists in API v2 only: asked with the v2 API key (signed MD5), as in v2 mode."""
        return await self.v2.identify(auth_code)

    async def bill(self, day: date) -> list[BillRow]:
        """The v2 text bill (pay/downloadbill): it lists the merchant's code payments whichever API made them."""
        return await self.v2.bill(day)

    async def refund(self, order: RefundOrder) -> RefundResult:
        body: dict[str, Any] = {
            "out_trade_no": order.out_trade_no,
            "out_refund_no": order.out_refund_no,
            "amount": {"refund": order.amount_fen, "total": order.total_fen, "currency": "CNY"},
        }
        if order.reason:
            body["reason"] = _truncate_utf8(order.reason, 80)
        answer = await self._call("POST", "/v3/refund/domestic/refunds", body)
        if answer.status == 200:
            return self._refund(answer.body, order.out_trade_no, order.out_refund_no)
        code = answer.code
        listed = REFUND_ERROR_CODES_V3.get(code or "")
        found = listed or _REFUND_CONFIRMING
        if listed is None or (answer.status >= 500 and listed.status is RefundStatus.FAILED):
            log.warning(
                "refund %s: HTTP %d %s (%s); querying", order.out_refund_no, answer.status, code, answer.message
            )
            found = _REFUND_CONFIRMING
        zh = found.zh
        if code == "INVALID_REQUEST" and answer.message:
            zh = f"微信支付拒绝了该退款：{answer.message}"
        return RefundResult(found.status, order.out_refund_no, code=code, reason_zh=zh, reason_en=found.en)

    async def refund_query(self, out_trade_no: str, out_refund_no: str) -> RefundResult:
        answer = await self._call("GET", f"/v3/refund/domestic/refunds/{out_refund_no}")
        if answer.status == 200:
            return self._refund(answer.body, out_trade_no, out_refund_no)
        if answer.status == 404 and answer.code in NOT_FOUND_CODES:
            return RefundResult(
                RefundStatus.NOT_FOUND,
                out_refund_no,
                code=answer.code,
                reason_zh="微信支付无此退款",
                reason_en="WeChat Pay has no such refund",
            )
        return RefundResult(
            RefundStatus.UNKNOWN,
            out_refund_no,
            code=answer.code,
            reason_zh=_REFUND_CONFIRMING.zh,
            reason_en=_REFUND_CONFIRMING.en,
        )

    async def aclose(self) -> None:
        await self._clients.aclose()
        await self.v2.aclose()

    # -- the exchange --

    def _http(self) -> httpx.AsyncClient:
        return self._clients.get()

    async def _call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Answer:
        """Send a signed request; the answer once its signature verifies. ProviderRejected for a 401 (WeChat
        could not verify ours: nothing was processed), ProviderUnreachable, ProviderBadResponse for the rest."""
        data = b"" if body is None else json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        signed_url = self._prefix + path
        headers = {
            "Authorization": authorization(
                mchid=self.mchid,
                serial_no=self.merchant_serial_no,
                key=self._key,
                method=method,
                url=signed_url,
                body=data,
                timestamp=str(int(self._clock().timestamp())),
            ),
            "Accept": "application/json",
        }
        if body is not None:
            headers["Content-Type"] = "application/json"
        what = f"{method} {path.split('?', 1)[0]}"
        try:
            response = await self._http().request(method, self.base_url + path, content=data, headers=headers)
        except httpx.TimeoutException as exc:
            raise ProviderUnreachable(
                f"{what}: no answer within {self.timeout:g} s (it may have been processed)"
            ) from exc
        except httpx.TransportError as exc:
            raise ProviderUnreachable(f"{what}: cannot reach WeChat Pay ({type(exc).__name__}: {exc})") from exc
        if response.status_code == 401:
            # Our signature (or serial) was refused before any processing; such answers need not be signed.
            raise ProviderRejected(f"{what}: HTTP 401 from WeChat Pay: {_message_of(response.content)}")
        self.verifier.verify(response.headers, response.content, self._clock(), f"{what}: the answer")
        if response.status_code == 204 or not response.content:
            return Answer(response.status_code, {})
        try:
            parsed = json.loads(response.content)
        except ValueError:
            raise ProviderBadResponse(f"{what}: HTTP {response.status_code}, the answer is not JSON") from None
        if not isinstance(parsed, dict):
            raise ProviderBadResponse(f"{what}: the answer is JSON but not an object")
        if response.status_code >= 300 and not parsed.get("code"):
            raise ProviderBadResponse(f"{what}: HTTP {response.status_code} without an error code")
        for name, ours in (("appid", self.appid), ("mchid", self.mchid)):
            if parsed.get(name) and parsed[name] != ours:
                raise ProviderBadResponse(f"{what}: the answer is for {name} {parsed[name]}, not ours")
        return Answer(response.status_code, parsed)

    def _transaction(self, body: Mapping[str, Any], out_trade_no: str) -> Result:
        """A transaction (codepay 200, query 200) → Result."""
        if body.get("out_trade_no") and body["out_trade_no"] != out_trade_no:
            raise ProviderBadResponse(f"the answer is for order {body['out_trade_no']}, not {out_trade_no}")
        state = str(body.get("trade_state") or "")
        amount: Mapping[str, Any] = body["amount"] if isinstance(body.get("amount"), dict) else {}
        payer: Mapping[str, Any] = body["payer"] if isinstance(body.get("payer"), dict) else {}
        total = _fen(amount.get("total"), "amount.total")
        if state == "SUCCESS":
            if not body.get("transaction_id"):
                raise ProviderBadResponse("a paid answer without transaction_id")
            return Result(
                Outcome.SUCCESS,
                out_trade_no,
                provider_trade_no=str(body["transaction_id"]),
                payer_id=payer.get("openid") or None,
                amount_fen=total,
                paid_at=parse_time(body.get("success_time")),
                code="SUCCESS",
                reason_zh="支付成功",
                reason_en="Paid",
            )
        found = TRADE_STATES.get(state)
        if found is None:
            log.warning("query %s: unknown trade_state %r", out_trade_no, state)
            return Result(
                Outcome.UNKNOWN, out_trade_no, code=state or None, reason_zh=_CONFIRMING.zh, reason_en=_CONFIRMING.en
            )
        return Result(
            found.outcome,
            out_trade_no,
            provider_trade_no=body.get("transaction_id") or None,
            payer_id=payer.get("openid") or None,
            amount_fen=total,
            code=state,
            reason_zh=str(body.get("trade_state_desc") or found.zh),
            reason_en=found.en,
        )

    def _refund(self, body: Mapping[str, Any], out_trade_no: str, out_refund_no: str) -> RefundResult:
        """A refund (refund 200, refund query 200) → RefundResult."""
        for name, ours in (("out_trade_no", out_trade_no), ("out_refund_no", out_refund_no)):
            if body.get(name) and body[name] != ours:
                raise ProviderBadResponse(f"refund: the answer is for {name} {body[name]}, not {ours}")
        status = str(body.get("status") or "")
        found = REFUND_STATUSES_V3.get(status)
        if found is None:
            log.warning("refund %s: unknown status %r", out_refund_no, status)
            found = _REFUND_CONFIRMING
        if status == "ABNORMAL":
            log.warning(
                "refund %s: WeChat could not pay it back (ABNORMAL); handle it in the merchant platform", out_refund_no
            )
        amount: Mapping[str, Any] = body["amount"] if isinstance(body.get("amount"), dict) else {}
        return RefundResult(
            found.status,
            out_refund_no,
            provider_refund_no=body.get("refund_id") or None,
            amount_fen=_fen(amount.get("refund"), "amount.refund"),
            refunded_at=parse_time(body.get("success_time")) if status == "SUCCESS" else None,
            code=status or None,
            reason_zh=found.zh,
            reason_en=found.en,
        )


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {what} {path}: {exc.strerror}") from None


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _message_of(body: bytes) -> str:
    try:
        parsed = json.loads(body)
    except ValueError:
        return "no JSON body"
    if isinstance(parsed, dict):
        return f"{parsed.get('code', '')} {parsed.get('message', '')}".strip()
    return "no error code"
