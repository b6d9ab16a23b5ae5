"""Decrypting a mini program's user data against WeChat's published example (开放数据校验与解密), and every way a
forged or foreign one is refused with a code, never an exception of the cipher."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from central.wechat import opendata
from central.wechat.api_client import redact
from central.wechat.opendata import OpenDataError

# WeChat's demo, as published with the documentation's sample code (WXBizDataCrypt in Node, Python, PHP, C++)
# and copied into many SDKs' tests.
DEMO_APPID = "wx4f4bc4dec97d474b"
DEMO_SESSION_KEY = "tiihtNczf5v6AKRyjwEUhQ=="
DEMO_IV = "r7BXXKkLb8qrSNn05n0qiA=="
DEMO_ENCRYPTED_DATA = (
    "CiyLU1Aw2KjvrjMdj8YKliAjtP4gsMZMQmRzooG2xrDcvSnxIMXFufNstNGTyaGS9uT5geRa0W4oTOb1WT7fJlAC+oNPdbB+3hVbJSRgv+4lG"
    "OETKUQz6OYStslQ142dNCuabNPGBzlooOmB231qMM85d2/fV6ChevvXvQP8Hkue1poOFtnEtpyxVLW1zAo6/1Xx1COxFvrc2d7UL/lmHInNlxu"
    "acJXwu0fjpXfz/YqYzBIBzD6WUfTIF9GRHpOn/Hz7saL8xz+W//FRAUid1OksQaQx4CMs8LOddcQhULW4ucetDf96JcR3g0gfRK4PC7E/r7Z6"
    "xNrXd2UIeorGj5Ef7b1pJAYB6Y5anaHqZ9J6nKEBvB4DnNLIVWSgARns/8wR2SiRS7MNACwTyrGvt9ts8p12PKFdlqYTopNHR1Vf7XjfhQlVsA"
    "JdNiKdYmYVoKlaRv85IfVunYzO0IKXsyl7JCUjCpoG20f0a04COwfneQAGGwd5oa+T8yO5hzuyDb/XcxxmK01EpqOyuxINew=="
)
# What it decrypts to, byte for byte (the demo prints it as an object: these are its fields, in its order).
DEMO_PLAINTEXT = (
    '{"openId":"oGZUI0egBJY1zhBYw2KhdUfwVJJE","nickName":"Band","gender":1,"language":"zh_CN","city":"Guangzhou",'
    '"province":"Guangdong","country":"CN","avatarUrl":"http://wx.qlogo.cn/mmopen/vi_32/aSKcBBPpibyKNicHNTMM0qJVh8'
    'Kjgiak2AHWr8MHM4WgMEm7GFhsf8OYrySdbvAMvTsw3mo8ibKicsnfN5pRjl1p8HQ/0","unionId":"ocMvos6NjeKLIBqg5Mr9QjxrP1FA",'
    '"watermark":{"timestamp":1477314187,"appid":"wx4f4bc4dec97d474b"}}'
)
DEMO_TIME = datetime.fromtimestamp(1477314187, UTC)


def test_wechats_published_example_decrypts_and_encrypts_back_byte_for_byte():
    found = opendata.decrypt(DEMO_SESSION_KEY, DEMO_ENCRYPTED_DATA, DEMO_IV)
    assert found == json.loads(DEMO_PLAINTEXT)
    assert found["unionId"] == "ocMvos6NjeKLIBqg5Mr9QjxrP1FA" and found["openId"] == "oGZUI0egBJY1zhBYw2KhdUfwVJJE"
    # Sealing the same text with the same key and IV gives WeChat's ciphertext exactly (its pad is 7 bytes of 7).
    assert opendata.encrypt(DEMO_SESSION_KEY, DEMO_PLAINTEXT.encode(), base64.b64decode(DEMO_IV)) == DEMO_ENCRYPTED_DATA
    opendata.check_watermark(found, DEMO_APPID, DEMO_TIME + timedelta(minutes=5), 600)


def _raw(plaintext_blocks: bytes) -> str:
    """Encrypt already padded bytes (any padding, good or bad) with the demo key and IV."""
    key, iv = base64.b64decode(DEMO_SESSION_KEY), base64.b64decode(DEMO_IV)
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return base64.b64encode(encryptor.update(plaintext_blocks) + encryptor.finalize()).decode()


def _code(encrypted: str, iv: str = DEMO_IV, key: str = DEMO_SESSION_KEY) -> str:
    with pytest.raises(OpenDataError) as caught:
        opendata.decrypt(key, encrypted, iv)
    return caught.value.code


@pytest.mark.parametrize(
    "padded",
    [
        b'{"a":1}' + b"\x00" * 9,  # pad byte 0
        b'{"a":1}' + b"\x09" * 8 + b"\x11",  # pad byte 17
        b'{"a":1}' + b"\x09" * 8 + b"\x20",  # pad byte 32 (WeChat's own sample code would take it)
        b'{"a":1}' + b"\x01" * 7 + b"\x09\x09",  # pad bytes that do not all say 9
        b'{"a":1}' + b"\x07" * 9 + b"\x10" * 16,  # a good pad of 16 after bytes that are not JSON
    ],
    ids=["pad-0", "pad-17", "pad-32", "pad-inconsistent", "garbage-before-pad"],
)
def test_bad_padding_is_refused_as_a_decryption_failure(padded):
    assert _code(_raw(padded)) == "decryption_failed"


def test_a_pad_of_16_and_of_1_are_accepted():
    assert opendata.decrypt(DEMO_SESSION_KEY, _raw(b'{"n":"0123456"}' + b"\x01"), DEMO_IV) == {"n": "0123456"}
    assert opendata.decrypt(DEMO_SESSION_KEY, _raw(b'{"n":"01234567"}' + b"\x10" * 16), DEMO_IV) == {"n": "01234567"}


def test_altered_ciphertext_iv_or_key_is_refused():
    data = bytearray(base64.b64decode(DEMO_ENCRYPTED_DATA))
    for at in (0, len(data) // 2, len(data) - 17, len(data) - 1):
        changed = bytearray(data)
        changed[at] ^= 0x01
        assert _code(base64.b64encode(bytes(changed)).decode()) == "decryption_failed", at
    other_key = base64.b64encode(b"\x00" * 16).decode()
    assert _code(DEMO_ENCRYPTED_DATA, key=other_key) == "decryption_failed"
    # Another IV changes only the first block: the JSON no longer parses.
    assert _code(DEMO_ENCRYPTED_DATA, iv=base64.b64encode(b"\x01" * 16).decode()) == "decryption_failed"
    # Not a JSON object (a list), though well padded.
    assert _code(_raw(b"[1,2,3]" + b"\x09" * 9)) == "decryption_failed"


@pytest.mark.parametrize(
    ("encrypted", "iv", "key"),
    [
        ("not base64!", DEMO_IV, DEMO_SESSION_KEY),
        (DEMO_ENCRYPTED_DATA[:-4], DEMO_IV, DEMO_SESSION_KEY),  # not whole blocks
        (base64.b64encode(b"\x00" * 15).decode(), DEMO_IV, DEMO_SESSION_KEY),
        (DEMO_ENCRYPTED_DATA, base64.b64encode(b"\x00" * 8).decode(), DEMO_SESSION_KEY),  # IV of 8 bytes
        (DEMO_ENCRYPTED_DATA, "r7BXXKkLb8qrSNn05n0qiA", DEMO_SESSION_KEY),  # padding of base64 missing
        (DEMO_ENCRYPTED_DATA, "ｒ7BXXKkLb8qrSNn05n0qiA==", DEMO_SESSION_KEY),  # not ASCII
        ("", DEMO_IV, DEMO_SESSION_KEY),
    ],
)
def test_malformed_input_is_refused_without_decrypting(encrypted, iv, key):
    with pytest.raises(OpenDataError) as caught:
        opendata.decrypt(key, encrypted, iv)
    assert caught.value.status == 422 and caught.value.code in ("invalid_encrypted_data", "decryption_failed")


def test_the_watermark_must_name_this_app_and_be_recent():
    data = json.loads(DEMO_PLAINTEXT)

    def code(appid: str, now: datetime, watermark: object = data["watermark"]) -> str:
        with pytest.raises(OpenDataError) as caught:
            opendata.check_watermark(data | {"watermark": watermark}, appid, now, 600)
        return caught.value.code

    assert code("wx0000000000000000", DEMO_TIME) == "watermark_appid_mismatch"
    assert code(DEMO_APPID, DEMO_TIME + timedelta(seconds=601)) == "watermark_stale"
    assert code(DEMO_APPID, DEMO_TIME - timedelta(minutes=5)) == "watermark_stale"  # sealed "in the future"
    assert code(DEMO_APPID, DEMO_TIME, None) == "watermark_missing"
    assert code(DEMO_APPID, DEMO_TIME, {"appid": DEMO_APPID, "timestamp": "1477314187"}) == "watermark_missing"
    assert code(DEMO_APPID, DEMO_TIME, {"appid": DEMO_APPID, "timestamp": 10**20}) == "watermark_missing"
    opendata.check_watermark(data, DEMO_APPID, DEMO_TIME + timedelta(seconds=600), 600)


def test_request_lines_in_logs_never_show_the_secret_codes_or_tokens():
    url = (
        "https://api.weixin.qq.com/sns/jscode2session?appid=wx1&secret=s3cr3t&js_code=0001abcd&grant_type="
        "authorization_code"
    )
    assert redact(url) == (
        "https://api.weixin.qq.com/sns/jscode2session?appid=wx1&secret=***&js_code=***&grant_type=authorization_code"
    )
    assert redact("https://x/cgi-bin/user/get?access_token=T0K&next_openid=o1") == (
        "https://x/cgi-bin/user/get?access_token=***&next_openid=o1"
    )
