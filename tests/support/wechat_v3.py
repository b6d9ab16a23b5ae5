"""WeChat Pay API v3 for tests: the test merchant's RSA key and the simulator's "WeChat Pay" key (made once per run:
RSA 2048 takes a moment), the simulator set up with them, and central's settings naming them. Test values only."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from central.payments.simulators.wechat_v3 import DEFAULT_PUBLIC_KEY_ID, WeChatV3Simulator, generate_private_key_pem
from central.payments.wechat_v3 import load_private_key, public_pem
from tests.support.credentials import APPID, MCH_ID, WECHAT_KEY

MERCHANT_SERIAL = "3C1F5E0A9B7D2E4F6A8C0B1D3E5F7A9C2B4D6E8F"
PUBLIC_KEY_ID = DEFAULT_PUBLIC_KEY_ID
API_V3_KEY = "test0wechat0pay0api0v3key0000000"


@functools.cache
def merchant_key_pem() -> str:
    return generate_private_key_pem()


@functools.cache
def wechatpay_key_pem() -> str:
    return generate_private_key_pem()


def v3_simulator(**options: Any) -> WeChatV3Simulator:
    """The v2 and v3 simulator of the test merchant (APPID, MCH_ID), checking requests with its key."""
    values: dict[str, Any] = dict(
        appid=APPID,
        mch_id=MCH_ID,
        api_key=WECHAT_KEY,
        merchant_public_key_pem=public_pem(load_private_key(merchant_key_pem())),
        merchant_serial_no=MERCHANT_SERIAL,
        wechatpay_private_key_pem=wechatpay_key_pem(),
        public_key_id=PUBLIC_KEY_ID,
    )
    return WeChatV3Simulator(**(values | options))


def v3_settings(folder: Path) -> dict[str, Any]:
    """Central's settings for API v3 against `v3_simulator()`, its key files written into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    private, public = folder / "apiclient_key.pem", folder / "pub_key.pem"
    private.write_text(merchant_key_pem(), encoding="ascii")
    public.write_text(public_pem(load_private_key(wechatpay_key_pem())), encoding="ascii")
    return dict(
        wechat_pay_api="v3",
        wechat_merchant_serial_no=MERCHANT_SERIAL,
        wechat_v3_private_key_path=private,
        wechat_pay_public_key_path=public,
        wechat_pay_public_key_id=PUBLIC_KEY_ID,
        wechat_api_v3_key=API_V3_KEY,
    )
