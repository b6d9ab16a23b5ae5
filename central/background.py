"""What a central process runs besides answering requests: the payment gateway (its tasks and leases) and, where
jobs run, the periodic jobs. `pos-central serve` runs it in the web app's lifespan; `pos-central worker` runs it
alone, without HTTP, for a chain whose web replicas run no jobs (docs/DEPLOYING-CENTRAL.md).
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa

from central import keys
from central.clock import utcnow
from central.config import Settings
from central.db import write_session
from central.leases import Leases
from central.metrics import CentralMetrics
from central.payments.brand_api import BrandCardClient
from central.payments.brand_cards import BrandCardSync, JoinOnPayment
from central.payments.cards import CardSync
from central.payments.gateway import Gateway
from central.payments.orphans import OrphanWatch
from central.payments.provider import Provider
from central.wechat.api_client import WeChatApi, apis_from_settings
from central.wechat.official_account import FollowerSync

log = logging.getLogger(__name__)


class Background:
    """The gateway, always; the card pushes, the payments check and the follower sync when `run_jobs`. Each job
    runs in one process at a time however many start it (central/jobs.py)."""

    def __init__(
        self,
        settings: Settings,
        engine: sa.Engine,
        providers: dict[str, Provider],
        leases: Leases,
        *,
        run_jobs: bool,
        metrics: CentralMetrics | None = None,
        brand_card_api: BrandCardClient | None = None,
        payment_options: dict[str, Any] | None = None,
    ):
        self.leases = leases
        self._brand_card_api = brand_card_api
        self.gateway = Gateway(
            settings,
            engine,
            providers,
            metrics=metrics,
            card_join=JoinOnPayment.from_settings(settings, engine),  # 下单同步入会
            leases=leases,
            **(payment_options or {}),
        )
        self.card_sync: CardSync | BrandCardSync | None = None
        self.orphan_watch: OrphanWatch | None = None
        self.follower_sync: FollowerSync | None = None
        self._follower_api: WeChatApi | None = None
        if run_jobs:
            # Points changes go to the member card the settings name (wechat_member_card): legacy 卡券, brand, none.
            if settings.wechat_member_card == "legacy":
                self.card_sync = CardSync.from_settings(settings, engine, leases)
            elif settings.wechat_member_card == "brand":
                self.card_sync = BrandCardSync.from_settings(settings, engine, brand_card_api, leases)
            self.orphan_watch = OrphanWatch.from_settings(settings, engine, self.gateway, leases)
            if settings.wechat_follower_sync_seconds > 0:
                self._follower_api = apis_from_settings(settings).get("official_account")
                if self._follower_api is not None:
                    self.follower_sync = FollowerSync(
                        engine, self._follower_api, settings.wechat_follower_sync_seconds, leases=leases
                    )
        with write_session(engine) as session:
            keys.ensure_key(session, utcnow())  # a member-code key exists before the first store asks
            session.commit()

    async def start(self) -> None:
        await self.gateway.start()
        for job in self._jobs():
            job.start()
        self.leases.start()

    async def stop(self) -> None:
        await self.leases.stop()
        for job in reversed(self._jobs()):
            await job.stop()
        await self.gateway.stop()
        if self._brand_card_api is not None and not isinstance(self.card_sync, BrandCardSync):
            await self._brand_card_api.aclose()  # the card job closes it where it runs
        if self._follower_api is not None:
            self._follower_api.close()

    def _jobs(self) -> list[CardSync | BrandCardSync | OrphanWatch | FollowerSync]:
        return [job for job in (self.card_sync, self.orphan_watch, self.follower_sync) if job is not None]
