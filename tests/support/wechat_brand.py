"""WeChat Pay's Brand API for tests: the test brand's API key and its "WeChat Pay" key (made once per run), the
member card simulator set up with them, and central's settings naming them. Test values only."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from central.payments.simulators.wechat_brand import DEFAULT_BRAND_PUBLIC_KEY_ID, BrandCardSimulator
from central.payments.simulators.wechat_v3 import generate_private_key_pem
from central.payments.wechat_v3 import load_private_key, public_pem
from tests.support.credentials import APPID

BRAND_ID = "1004"
BRAND_SERIAL = "3493DE0D9BB4EB98A8C65EAA7E8EE887EC24B71A"
BRAND_PUBLIC_KEY_ID = DEFAULT_BRAND_PUBLIC_KEY_ID
CARD_ID = "pbLatjvWOibDc5-TBnbUk1pD12o0"


@functools.cache
def brand_key_pem() -> str:
    return generate_private_key_pem()


@functools.cache
def brand_wechatpay_key_pem() -> str:
    return generate_private_key_pem()


def brand_simulator(**options: Any) -> BrandCardSimulator:
    """The test brand's member card API with card template CARD_ID, for the payments of APPID."""
    values: dict[str, Any] = dict(
        brand_id=BRAND_ID,
        brand_public_key_pem=public_pem(load_private_key(brand_key_pem())),
        brand_serial_no=BRAND_SERIAL,
        wechatpay_private_key_pem=brand_wechatpay_key_pem(),
        public_key_id=BRAND_PUBLIC_KEY_ID,
        appid=APPID,
    )
    simulator = BrandCardSimulator(**(values | options))
    simulator.add_card(CARD_ID)
    return simulator


def brand_settings(folder: Path) -> dict[str, Any]:
    """Central's settings for the merchant member card against `brand_simulator()`, its key files in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    private, public = folder / "brand_apiclient_key.pem", folder / "brand_pub_key.pem"
    private.write_text(brand_key_pem(), encoding="ascii")
    public.write_text(public_pem(load_private_key(brand_wechatpay_key_pem())), encoding="ascii")
    return dict(
        wechat_member_card="brand",
        wechat_brand_id=BRAND_ID,
        wechat_brand_serial_no=BRAND_SERIAL,
        wechat_brand_private_key_path=private,
        wechat_brand_public_key_path=public,
        wechat_brand_public_key_id=BRAND_PUBLIC_KEY_ID,
        wechat_brand_card_id=CARD_ID,
    )
