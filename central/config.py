"""The central service's settings: one TOML file, validated at start, with errors that name the key and the fix.

Environment variables override the file key by key (`POS_CENTRAL_PHONE_HASH_KEY=...`), so secrets can stay out
of it. Outside `environment = "development"` the public demo key is refused.
"""

from __future__ import annotations

import difflib
import os
import stat
import tomllib
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "POS_CENTRAL_"
DEMO_PHONE_HASH_KEY = "demo-phone-hash-key-not-secret"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="forbid", frozen=True, env_prefix=ENV_PREFIX)

    environment: Literal["production", "development"] = Field(
        "production", examples=["production"], description="development allows the public demo secrets"
    )
    database_url: str = Field(
        "sqlite:///central.db",
        examples=["sqlite:///central.db", "postgresql://pos:secret@db.example.com/pos_central"],
        description="SQLAlchemy URL; a relative SQLite path is taken from the settings file's folder",
    )
    phone_hash_key: SecretStr = Field(
        examples=["set POS_CENTRAL_PHONE_HASH_KEY; the same value as every agent's privacy.phone_hash_key"],
        description="key of the phone number hash (HMAC-SHA256), shared with the agents",
    )
    host: str = Field("127.0.0.1", examples=["127.0.0.1"])
    port: int = Field(8800, ge=1, le=65535, examples=[8800])
    max_page_size: int = Field(1000, ge=1, le=10000, examples=[1000], description="most changes per feed page")
    default_page_size: int = Field(500, ge=1, le=10000, examples=[500], description="feed page without ?limit=")
    key_grace_hours: int = Field(
        168, ge=0, le=24 * 365, examples=[168], description="how long a rotated member-code key still verifies"
    )
    welcome_points: int = Field(
        0, ge=0, le=100_000, examples=[100], description="points a customer gets on joining (booked once per member)"
    )
    card_no_prefix: str | None = Field(
        None,
        pattern=r"^[0-9]{2,6}$",
        examples=["8800"],
        description="a member who joins gets a 13-digit card number with this prefix, to keep as a QR in WeChat; "
        "the agents' codes.card_patterns must match it",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", examples=["INFO"])
    metrics_token: SecretStr | None = Field(
        None,
        examples=["set POS_CENTRAL_METRICS_TOKEN; what Prometheus sends as its bearer token"],
        description="bearer token for GET /metrics, at least 16 characters; without it /metrics is off",
    )

    # --- several processes on one PostgreSQL database (docs/DEPLOYING-CENTRAL.md) -------------------------------
    instance: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.:-]{1,64}$",
        examples=["central-1:8800"],
        description="this process's name among central's processes (leases); default: host:port, or host:worker:pid",
    )
    run_jobs: bool = Field(
        True,
        examples=[True],
        description="serve also runs the periodic jobs (card pushes, payments check, follower sync); false on web "
        "replicas when `pos-central worker` runs them. Either way each job runs in one process at a time",
    )
    lease_seconds: float = Field(
        30.0,
        ge=1,
        le=600,
        examples=[30.0],
        description="how long a process holds an unfinished payment or a job without renewing: a dead replica's "
        "work is taken over this long after it died",
    )
    db_pool_size: int = Field(
        10, ge=1, le=200, examples=[10], description="PostgreSQL connections each process keeps open"
    )
    db_max_overflow: int = Field(
        10, ge=0, le=200, examples=[10], description="extra PostgreSQL connections a process opens under load"
    )
    db_pool_timeout_seconds: float = Field(
        5.0,
        gt=0,
        le=60,
        examples=[5.0],
        description="a request waits this long for a free connection, then is answered 503 with Retry-After",
    )
    db_statement_timeout_seconds: float = Field(
        15.0,
        ge=0,
        le=600,
        examples=[15.0],
        description="PostgreSQL cancels a statement running longer (the request answers 503); 0: no limit",
    )
    max_requests_in_flight: int = Field(
        256,
        ge=1,
        le=10_000,
        examples=[256],
        description="requests a process works on at once; more are answered 503 with Retry-After at once",
    )

    # --- the e-receipt page, GET /e/{token} (docs/central.md) ------------------------------------------------
    e_receipt_timezone: str = Field(
        "Asia/Shanghai", examples=["Asia/Shanghai"], description="the stores' time zone: times on e-receipt pages"
    )
    e_receipt_join_url: str | None = Field(
        None,
        examples=["https://m.example.com/join"],
        description="where a customer without a membership joins: a link on e-receipts of sales without a member",
    )

    # --- payments (docs/PAYMENTS.md) -------------------------------------------------------------------------
    # WeChat Pay API v2. Without wechat_base_url WeChat Pay is not configured and its codes are refused (422).
    wechat_base_url: str | None = Field(
        None, examples=["https://api.mch.weixin.qq.com"], description="WeChat Pay v2 API; a simulator's URL in the demo"
    )
    wechat_appid: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{1,32}$", examples=["wx8888888888888888"])
    wechat_mch_id: str | None = Field(None, pattern=r"^[0-9]{1,32}$", examples=["1900000109"])
    wechat_api_key: SecretStr | None = Field(
        None,
        examples=["set POS_CENTRAL_WECHAT_API_KEY: the 32-character API key (v2) of the merchant platform"],
        description="the merchant's v2 API key that signs requests and answers",
    )
    wechat_sign_type: Literal["MD5", "HMAC-SHA256"] = Field("HMAC-SHA256", examples=["HMAC-SHA256"])
    wechat_cert_path: Path | None = Field(
        None,
        examples=["/etc/pos-central/apiclient_cert.pem"],
        description="merchant API certificate (reverse needs it)",
    )
    wechat_key_path: Path | None = Field(
        None, examples=["/etc/pos-central/apiclient_key.pem"], description="its private key"
    )
    wechat_timeout_seconds: float = Field(10.0, gt=0, le=120, examples=[10.0], description="per request to WeChat Pay")
    wechat_spbill_create_ip: IPv4Address = Field(
        IPv4Address("127.0.0.1"),
        examples=["203.0.113.10"],
        description="micropay's spbill_create_ip: the public IPv4 address central reaches WeChat Pay from",
    )
    wechat_card_api_base_url: str | None = Field(
        None, examples=["https://api.weixin.qq.com"], description="official-account API for member-card points sync"
    )
    wechat_card_appsecret: SecretStr | None = Field(
        None,
        examples=["set POS_CENTRAL_WECHAT_CARD_APPSECRET"],
        description="AppSecret of wechat_appid, for access tokens",
    )
    wechat_card_sync_seconds: float = Field(
        5.0, gt=0, le=3600, examples=[5.0], description="how often the card queue is pushed"
    )

    # WeChat Pay API v3 for code payment (central/payments/wechat_v3.py; docs/WECHAT.md, "WeChat Pay: v2 or v3").
    # v3 signs requests with the merchant's RSA key and checks WeChat Pay's answers with the WeChat Pay public key
    # or a platform certificate (both at once while switching). wechat_api_key stays needed: identifying the payer
    # (authcodetoopenid) and the settlement bill exist in API v2 only.
    wechat_pay_api: Literal["v2", "v3"] = Field(
        "v2", examples=["v3"], description="the WeChat Pay API code payments and refunds go through"
    )
    wechat_merchant_serial_no: str | None = Field(
        None,
        pattern=r"^[0-9A-Fa-f]{1,64}$",
        examples=["444F4864EA9B34415E5C03CE1E7F8A86D9A3BF34"],
        description="serial number of the merchant API certificate; read from wechat_cert_path when not set",
    )
    wechat_v3_private_key_path: Path | None = Field(
        None,
        examples=["/etc/pos-central/apiclient_key.pem"],
        description="the merchant API private key that signs v3 requests; wechat_key_path when not set",
    )
    wechat_pay_public_key_path: Path | None = Field(
        None, examples=["/etc/pos-central/pub_key.pem"], description="the WeChat Pay public key (verifies answers)"
    )
    wechat_pay_public_key_id: str | None = Field(
        None,
        pattern=r"^PUB_KEY_ID_[0-9A-Za-z_]+$",
        examples=["PUB_KEY_ID_0119000001092026010100000000000001"],
        description="its id, the serial WeChat Pay names it by",
    )
    wechat_platform_cert_path: Path | None = Field(
        None,
        examples=["/etc/pos-central/wechatpay_platform_cert.pem"],
        description="a WeChat Pay platform certificate (verifies answers signed under its serial number)",
    )
    wechat_api_v3_key: SecretStr | None = Field(
        None,
        examples=["set POS_CENTRAL_WECHAT_API_V3_KEY: the 32-character API v3 key of the merchant platform"],
        description="decrypts notifications and downloaded certificates (AEAD_AES_256_GCM)",
    )

    @model_validator(mode="after")
    def _check_wechat_pay_v3(self) -> Settings:
        if self.wechat_pay_api != "v3" or not self.wechat_base_url:
            return self
        if self.wechat_v3_private_key_path is None and self.wechat_key_path is None:
            raise ValueError('wechat_pay_api = "v3" needs the merchant API private key: set wechat_v3_private_key_path')
        if self.wechat_merchant_serial_no is None and self.wechat_cert_path is None:
            raise ValueError(
                'wechat_pay_api = "v3" needs wechat_merchant_serial_no (the merchant API certificate\'s serial number)'
            )
        if (self.wechat_pay_public_key_path is None) != (self.wechat_pay_public_key_id is None):
            raise ValueError(
                "give wechat_pay_public_key_path and wechat_pay_public_key_id together (the key and its id)"
            )
        if self.wechat_pay_public_key_path is None and self.wechat_platform_cert_path is None:
            raise ValueError(
                'wechat_pay_api = "v3" needs a key to check WeChat Pay\'s answers with: wechat_pay_public_key_path '
                "and wechat_pay_public_key_id, or wechat_platform_cert_path (or both while switching)"
            )
        if self.wechat_api_v3_key is None:
            raise ValueError('wechat_pay_api = "v3" needs wechat_api_v3_key (POS_CENTRAL_WECHAT_API_V3_KEY)')
        if len(self.wechat_api_v3_key.get_secret_value().encode("utf-8")) != 32:
            raise ValueError("wechat_api_v3_key must be 32 characters (the API v3 key set in the merchant platform)")
        return self

    # The WeChat member card (docs/WECHAT.md, "Merchant member card (商家名片会员)"): "legacy" pushes points to a 卡券
    # member card (card/membercard/updateuser, the wechat_card_* keys above; central/payments/cards.py), "brand" to
    # the merchant member card of WeChat Pay's Brand API (central/payments/brand_cards.py), "off" to neither.
    wechat_member_card: Literal["legacy", "brand", "off"] = Field(
        "legacy", examples=["brand"], description="which WeChat member card members' points changes go to"
    )
    wechat_brand_base_url: str | None = Field(
        None,
        examples=["https://api.mch.weixin.qq.com"],
        description="WeChat Pay's Brand API (/brand/...); wechat_base_url when not set",
    )
    wechat_brand_id: str | None = Field(
        None, pattern=r"^[0-9A-Za-z_-]{1,32}$", examples=["1004"], description="the brand id (品牌ID) of 品牌经营平台"
    )
    wechat_brand_serial_no: str | None = Field(
        None,
        pattern=r"^[0-9A-Fa-f]{1,64}$",
        examples=["3493DE0D9BB4EB98A8C65EAA7E8EE887EC24B71A"],
        description="serial number of the brand API certificate (品牌API证书序列号)",
    )
    wechat_brand_private_key_path: Path | None = Field(
        None,
        examples=["/etc/pos-central/brand_apiclient_key.pem"],
        description="the brand API certificate's private key, which signs Brand API requests",
    )
    wechat_brand_public_key_path: Path | None = Field(
        None,
        examples=["/etc/pos-central/brand_pub_key.pem"],
        description="the brand's WeChat Pay public key (品牌经营平台 → 安全中心 → 管理公钥): checks the answers",
    )
    wechat_brand_public_key_id: str | None = Field(
        None,
        pattern=r"^PUB_KEY_ID_[0-9A-Za-z_]+$",
        examples=["PUB_KEY_ID_0112000000000000000000000000000001"],
        description="its id, sent as Wechatpay-Serial with every Brand API request",
    )
    wechat_brand_card_id: str | None = Field(
        None,
        pattern=r"^[0-9A-Za-z_-]{1,32}$",
        examples=["pbLatjvWOibDc5-TBnbUk1pD12o0"],
        description="the member card template (会员卡模板ID); its appid must be wechat_appid",
    )
    wechat_brand_calls_per_second: float = Field(
        5.0, gt=0, le=100, examples=[5.0], description="most Brand API calls a second (WeChat Pay: 5 per brand)"
    )
    wechat_card_join_on_payment: bool = Field(
        False,
        examples=[True],
        description="下单同步入会: WeChat Pay v3 code payments carry the card's join fields in attach, so the payer "
        "gets the member card, and central links its code to the member",
    )
    wechat_card_code_prefix: str = Field(
        "88", pattern=r"^[0-9]{0,8}$", examples=["88"], description="card codes central allocates start with this"
    )
    wechat_card_code_length: int = Field(
        20, ge=12, le=32, examples=[20], description="the length of the card codes central allocates"
    )
    wechat_card_join_cell: str | None = Field(
        None,
        pattern=r"^[^&=]{1,128}$",
        examples=["0"],
        description="the cell (会员动态) a join carries in attach, as WeChat Pay approved it; none when not set",
    )
    wechat_card_points_cell: str | None = Field(
        "1:{points}",
        max_length=128,
        examples=["1:{points}"],
        description="the cell of the user feed pushed for points earned ({points}, {balance}); none pushed when empty",
    )
    wechat_card_spend_cell: str | None = Field(
        None,
        max_length=128,
        examples=["9:{balance}"],
        description="the cell pushed for points spent ({points}, {balance}); not pushed when not set",
    )

    @model_validator(mode="after")
    def _check_member_card(self) -> Settings:
        from central.payments.brand_api import ATTACH_MAX, feed_cell, join_attach

        if self.wechat_member_card == "brand":
            missing = [
                key
                for key in (
                    "wechat_appid",
                    "wechat_brand_id",
                    "wechat_brand_serial_no",
                    "wechat_brand_private_key_path",
                    "wechat_brand_public_key_path",
                    "wechat_brand_public_key_id",
                    "wechat_brand_card_id",
                )
                if not getattr(self, key)
            ]
            if missing:
                raise ValueError(f'wechat_member_card = "brand" needs {", ".join(missing)}')
            base = self.wechat_brand_base_url or self.wechat_base_url
            if not base:
                raise ValueError('wechat_member_card = "brand" needs wechat_brand_base_url (or wechat_base_url)')
            if self.environment != "development" and not base.startswith("https://"):
                raise ValueError('the Brand API must be an https:// URL outside environment = "development"')
        for key in ("wechat_card_points_cell", "wechat_card_spend_cell"):
            template = getattr(self, key)
            if template:
                try:
                    filled = feed_cell(template, points=-99_999_999, balance=99_999_999)
                except (KeyError, IndexError, ValueError) as exc:
                    raise ValueError(f"{key}: only {{points}} and {{balance}} can be filled in ({exc})") from None
                if len(filled) > 128:
                    raise ValueError(f"{key}: filled in, it is {len(filled)} characters; a cell is at most 128")
        if self.wechat_card_code_length < len(self.wechat_card_code_prefix) + 10:
            raise ValueError(
                "wechat_card_code_length must leave at least 10 random digits after wechat_card_code_prefix"
            )
        if self.wechat_card_join_on_payment:
            if self.wechat_member_card != "brand":
                raise ValueError('wechat_card_join_on_payment needs wechat_member_card = "brand"')
            if self.wechat_pay_api != "v3" or not self.wechat_base_url:
                raise ValueError('wechat_card_join_on_payment needs WeChat Pay API v3 (wechat_pay_api = "v3")')
            longest = join_attach(
                self.wechat_brand_card_id or "", "9" * self.wechat_card_code_length, self.wechat_card_join_cell
            )
            if len(longest) > ATTACH_MAX or not longest.isascii():
                raise ValueError(
                    f"the join fields make an attach of {len(longest)} characters ({longest!r}); codepay's attach "
                    f"holds at most {ATTACH_MAX} ASCII characters: shorten wechat_card_join_cell or "
                    "wechat_card_code_length"
                )
        return self

    # Alipay face-to-face (the client is central/payments/alipay.py).
    alipay_base_url: str | None = Field(None, examples=["https://openapi.alipay.com/gateway.do"])
    alipay_app_id: str | None = Field(None, pattern=r"^[0-9A-Za-z_-]{1,32}$", examples=["2021000000000000"])
    alipay_private_key_path: Path | None = Field(None, examples=["/etc/pos-central/alipay_app_private_key.pem"])
    alipay_public_key_path: Path | None = Field(None, examples=["/etc/pos-central/alipay_public_key.pem"])
    alipay_timeout_seconds: float = Field(10.0, gt=0, le=120, examples=[10.0], description="per request to Alipay")

    # The gateway's timings (WeChat's guidance: query every 5 s, give up at about 30 s, reverse no earlier than
    # 15 s after the charge).
    payments_poll_seconds: float = Field(5.0, gt=0, le=60, examples=[5.0], description="between two queries")
    payments_limit_seconds: float = Field(
        30.0, gt=0, le=600, examples=[30.0], description="how long to wait for the customer before reversing"
    )
    payments_reverse_not_before_seconds: float = Field(
        15.0, ge=0, le=600, examples=[15.0], description="no reverse earlier than this after the charge was sent"
    )
    payments_answer_seconds: float = Field(
        8.0, ge=0, le=60, examples=[8.0], description="how long POST /v1/payments waits for the provider's first answer"
    )
    payments_retry_max_seconds: float = Field(
        60.0, gt=0, le=3600, examples=[60.0], description="longest pause between two tries of a failing reverse"
    )
    # Payments reconciliation (central/payments/orphans.py): a paid payment no sale holds is an orphan charge.
    payments_orphan_grace_seconds: float = Field(
        3600.0,
        ge=0,
        le=7 * 86400,
        examples=[3600.0],
        description="how long after a payment before it may be declared an orphan",
    )
    payments_orphan_clock_margin_seconds: float = Field(
        300.0,
        ge=0,
        le=86400,
        examples=[300.0],
        description="a till's row counts as after a payment only when its till clock says this much later",
    )
    payments_orphan_refund: bool = Field(
        False, examples=[False], description="refund orphan charges automatically (else they are reported for a person)"
    )
    payments_orphan_check_seconds: float = Field(
        600.0, ge=0, le=86400, examples=[600.0], description="how often the service checks the last days; 0: never"
    )

    # --- WeChat mini program and official account: identity for central (central/wechat, docs/WECHAT.md) ---------
    # An app is configured by its appid and AppSecret together; without them its routes answer 404 not_configured.
    wechat_api_base_url: str = Field(
        "https://api.weixin.qq.com",
        examples=["https://api.weixin.qq.com"],
        description="WeChat's server API (mini program login, phone number, official account followers); "
        "a simulator's URL in the demo",
    )
    wechat_miniprogram_appid: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_-]{1,32}$", examples=["wx5f3c9a1e7b2d4068"]
    )
    wechat_miniprogram_secret: SecretStr | None = Field(
        None,
        examples=["set POS_CENTRAL_WECHAT_MINIPROGRAM_SECRET: the mini program's AppSecret"],
        description="AppSecret of wechat_miniprogram_appid (login and access tokens)",
    )
    wechat_official_account_appid: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_-]{1,32}$", examples=["wx9b1d7e3a5c2f8046"]
    )
    wechat_official_account_secret: SecretStr | None = Field(
        None,
        examples=["set POS_CENTRAL_WECHAT_OFFICIAL_ACCOUNT_SECRET: the official account's AppSecret"],
        description="AppSecret of wechat_official_account_appid (access tokens for the follower sync)",
    )
    wechat_session_ttl_seconds: int = Field(
        7200, ge=60, le=30 * 86400, examples=[7200], description="how long a mini program session token is valid"
    )
    wechat_watermark_max_age_seconds: int = Field(
        600,
        ge=10,
        le=86400,
        examples=[600],
        description="decrypted user data whose watermark.timestamp is older than this is refused",
    )
    wechat_follower_sync_seconds: float = Field(
        3600.0,
        ge=0,
        le=7 * 86400,
        examples=[3600.0],
        description="how often the official account's followers are walked for UnionIDs; 0: never",
    )
    wechat_api_calls_per_second: float = Field(
        20.0, gt=0, le=1000, examples=[20.0], description="most calls per second central makes to WeChat, per app"
    )
    wechat_api_timeout_seconds: float = Field(10.0, gt=0, le=120, examples=[10.0], description="per request")

    @model_validator(mode="after")
    def _check_wechat_apps(self) -> Settings:
        for app in ("miniprogram", "official_account"):
            if bool(getattr(self, f"wechat_{app}_appid")) != bool(getattr(self, f"wechat_{app}_secret")):
                raise ValueError(
                    f"give wechat_{app}_appid and wechat_{app}_secret together (the app and its AppSecret)"
                )
        if (
            self.environment != "development"
            and (self.wechat_miniprogram_appid or self.wechat_official_account_appid)
            and not self.wechat_api_base_url.startswith("https://")
        ):
            raise ValueError('wechat_api_base_url must be an https:// URL outside environment = "development"')
        return self

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ):
        # The environment overrides the file.
        return (env_settings, init_settings)

    @field_validator("phone_hash_key", "metrics_token")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters")
        return value

    @field_validator("e_receipt_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, OSError) as exc:  # OSError: a folder ("America"), a long name
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @field_validator("e_receipt_join_url")
    @classmethod
    def _join_url(cls, value: str | None) -> str | None:
        if not value:
            return None  # "" in the file: no link
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL")
        return value

    @field_validator("database_url")
    @classmethod
    def _supported(cls, value: str) -> str:
        scheme = value.split(":", 1)[0]
        if scheme.split("+", 1)[0] not in ("sqlite", "postgresql", "postgres"):
            raise ValueError("must be a sqlite:/// or postgresql:// URL")
        return value

    @model_validator(mode="after")
    def _no_demo_secrets_in_production(self) -> Settings:
        if self.environment != "development" and self.phone_hash_key.get_secret_value() == DEMO_PHONE_HASH_KEY:
            raise ValueError(
                "phone_hash_key is the public demo key; set a secret one (POS_CENTRAL_PHONE_HASH_KEY), "
                'or environment = "development" for a demo'
            )
        if self.default_page_size > self.max_page_size:
            raise ValueError("default_page_size must not exceed max_page_size")
        self._check_payments()
        return self

    def _check_payments(self) -> None:
        if self.wechat_base_url:
            missing = [key for key in ("wechat_appid", "wechat_mch_id", "wechat_api_key") if not getattr(self, key)]
            if missing:
                raise ValueError(
                    f"wechat_base_url is set, so {', '.join(missing)} must be set too (or remove wechat_base_url)"
                )
            if (self.wechat_cert_path is None) != (self.wechat_key_path is None):
                raise ValueError(
                    "give wechat_cert_path and wechat_key_path together (the merchant API certificate and its key)"
                )
        if self.wechat_card_api_base_url and not (self.wechat_appid and self.wechat_card_appsecret):
            raise ValueError("wechat_card_api_base_url needs wechat_appid and wechat_card_appsecret")
        if self.alipay_base_url:
            missing = [
                key
                for key in ("alipay_app_id", "alipay_private_key_path", "alipay_public_key_path")
                if not getattr(self, key)
            ]
            if missing:
                raise ValueError(
                    f"alipay_base_url is set, so {', '.join(missing)} must be set too (or remove alipay_base_url)"
                )
        if self.environment != "development":
            # Money and keys over plain HTTP only on a development machine (the simulators).
            for key in ("wechat_base_url", "wechat_card_api_base_url", "alipay_base_url"):
                url = getattr(self, key)
                if url and not url.startswith("https://"):
                    raise ValueError(f'{key} must be an https:// URL outside environment = "development"')

    @property
    def wechat_configured(self) -> bool:
        return bool(self.wechat_base_url)

    @property
    def alipay_configured(self) -> bool:
        return bool(self.alipay_base_url)

    def key_bytes(self) -> bytes:
        return self.phone_hash_key.get_secret_value().encode("utf-8")


class SettingsError(Exception):
    """The settings file cannot be used. `problems` holds one line per bad key."""

    def __init__(self, path: Path, problems: list[str]):
        self.path = path
        self.problems = problems
        super().__init__(f"{path}: " + "; ".join(problems))


@dataclass(frozen=True)
class LoadedSettings:
    settings: Settings
    path: Path
    warnings: tuple[str, ...] = ()


def load_settings(path: str | os.PathLike[str]) -> LoadedSettings:
    """Read and validate a settings file; raise SettingsError naming every bad key."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise SettingsError(path, ["file not found; start from config/central-example.toml"]) from None
    except OSError as exc:
        raise SettingsError(path, [f"cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise SettingsError(path, ["not UTF-8 text; save the file as UTF-8"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(path, [f"not valid TOML: {exc}"]) from None
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        raise SettingsError(path, [_describe(error) for error in exc.errors()]) from None
    update: dict[str, Any] = {"database_url": resolve_sqlite_path(settings.database_url, path.parent)}
    for key in PATH_KEYS:  # relative key and certificate paths, like the database, are the settings file's
        value = getattr(settings, key)
        if value is not None and not value.is_absolute():
            update[key] = (path.parent / value).resolve()
    warnings = () if settings.environment == "development" else _secrets_others_can_read(path, data)
    return LoadedSettings(settings.model_copy(update=update), path, warnings)


def _secrets_others_can_read(path: Path, data: dict[str, Any]) -> tuple[str, ...]:
    """A warning per secret written in a settings file anyone on the machine can read (as the agent warns).
    Not in development, whose files hold the public demo secrets (config/central-demo.toml)."""
    if not path.stat().st_mode & stat.S_IROTH:
        return ()
    secret = [
        name for name, field in Settings.model_fields.items() if "SecretStr" in str(field.annotation) and data.get(name)
    ]
    if isinstance(data.get("database_url"), str) and urlsplit(data["database_url"]).password:
        secret.insert(0, "database_url")  # its password
    return tuple(
        f"{key} is written in a file anyone on this machine can read; run `chmod 600 {path}` or set {ENV_PREFIX}{key.upper()} instead"
        for key in secret
    )


PATH_KEYS = (
    "wechat_cert_path",
    "wechat_key_path",
    "wechat_v3_private_key_path",
    "wechat_pay_public_key_path",
    "wechat_platform_cert_path",
    "wechat_brand_private_key_path",
    "wechat_brand_public_key_path",
    "alipay_private_key_path",
    "alipay_public_key_path",
)


def resolve_sqlite_path(url: str, base: Path) -> str:
    """`sqlite:///relative/path.db` is taken from `base` (the settings file's folder), wherever we are started."""
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        return url
    rest = url[len(prefix) :]
    if not rest or rest.startswith("/") or rest.startswith(":memory:"):
        return url
    return prefix + str((base / rest).resolve())


def _describe(error: dict[str, Any]) -> str:
    loc = error["loc"]
    key = ".".join(str(part) for part in loc) or "(file)"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        guess = difflib.get_close_matches(str(loc[-1]), list(Settings.model_fields), n=1)
        hint = f"did you mean {guess[0]!r}?" if guess else f"known keys: {', '.join(Settings.model_fields)}"
        return f"{key}: unknown key; {hint}"
    field = Settings.model_fields.get(str(loc[0])) if loc else None
    if error["type"] == "missing" and field is not None:
        return f"{key}: required; {field.description}"
    if field is not None and field.examples:
        example = field.examples[0]
        shown = f'"{example}"' if isinstance(example, str) else str(example)
        return f"{key}: {message}; for example: {key} = {shown}"
    return f"{key}: {message}"
