"""The WeChat apps of the identity tests: a mini program and an official account of one merchant, served by the
wire-level simulator of WeChat's server API (central/wechat/simulator.py), and central configured for them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from central.payments.simulators import serve_in_thread
from central.wechat.simulator import WeChatApiSimulator
from tests.central.plugin import CentralServer

MP_APPID, MP_SECRET = "wx5f3c9a1e7b2d4068", "miniprogram-secret-0123456789"
OA_APPID, OA_SECRET = "wx9b1d7e3a5c2f8046", "official-account-secret-0123456789"
NOTICE = "2026-11"


def wechat_settings(url: str, **overrides: Any) -> dict[str, Any]:
    return {
        "wechat_api_base_url": url,
        "wechat_miniprogram_appid": MP_APPID,
        "wechat_miniprogram_secret": MP_SECRET,
        "wechat_official_account_appid": OA_APPID,
        "wechat_official_account_secret": OA_SECRET,
        "wechat_follower_sync_seconds": 0,  # the tests run the walk themselves, unless they say otherwise
    } | overrides


@contextmanager
def served_simulator(**fields: Any) -> Iterator[WeChatApiSimulator]:
    sim = WeChatApiSimulator(
        miniprogram_appid=MP_APPID,
        miniprogram_secret=MP_SECRET,
        official_account_appid=OA_APPID,
        official_account_secret=OA_SECRET,
        **fields,
    )
    served = serve_in_thread(sim.app())
    sim.url = served.url  # type: ignore[attr-defined]
    try:
        yield sim
    finally:
        served.stop()


def start_central(central_factory: Callable[..., CentralServer], sim: WeChatApiSimulator, **overrides: Any):
    return central_factory(**wechat_settings(sim.url, **overrides))  # type: ignore[attr-defined]
