"""The provider clients the settings configure: WeChat Pay when `wechat_base_url` is set (API v2, or v3 with
`wechat_pay_api = "v3"`), Alipay when `alipay_base_url` is set and its client (central/payments/alipay.py) is part
of this release."""

from __future__ import annotations

import importlib
import logging

from central.config import Settings
from central.payments.provider import Provider

log = logging.getLogger(__name__)


class ProviderSetupError(Exception):
    """A configured provider cannot be used (e.g. its certificate or key file cannot be read)."""


def build_providers(settings: Settings) -> dict[str, Provider]:
    providers: dict[str, Provider] = {}
    if settings.wechat_configured and settings.wechat_pay_api == "v3":
        from central.payments.wechat_v3 import WeChatPayV3Client

        try:
            providers["wechat"] = WeChatPayV3Client.from_settings(settings)
        except ValueError as exc:
            raise ProviderSetupError(f"WeChat Pay API v3: {exc}") from exc
    elif settings.wechat_configured:
        from central.payments.wechat import WeChatPayClient

        try:
            providers["wechat"] = WeChatPayClient.from_settings(settings)
        except ValueError as exc:
            raise ProviderSetupError(f"WeChat Pay: {exc}") from exc
        if settings.wechat_base_url.startswith("https://") and settings.wechat_cert_path is None:
            log.warning(
                "wechat_cert_path/wechat_key_path are not set: WeChat Pay will refuse reverse, so payments given up on cannot be reversed"
            )
    if settings.alipay_configured:
        try:
            module = importlib.import_module("central.payments.alipay")
        except ModuleNotFoundError as exc:
            if exc.name != "central.payments.alipay":
                raise
            log.warning("alipay_base_url is set but this release has no Alipay client; Alipay codes are refused")
        else:
            try:
                providers["alipay"] = module.AlipayClient(settings)
            except (ValueError, OSError) as exc:
                raise ProviderSetupError(f"Alipay: {exc}") from exc
    return providers
