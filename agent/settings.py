"""The agent's settings: one TOML file, validated at start, with errors that name the key and the fix.

Environment variables override the file (`POS_EDGE_CENTRAL__TOKEN=...`), so a store can keep secrets out of
the file, e.g. in a systemd credential or drop-in.
"""

from __future__ import annotations

import difflib
import os
import re
import stat
import tomllib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as EnvironmentValueError

from agent.codes import CodeRules, validate_pattern

ENV_PREFIX = "POS_EDGE_"

Identifier = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,16}$")]


class Section(BaseModel):
    # A typo'd key must never pass silently.
    model_config = ConfigDict(extra="forbid", frozen=True)


class StoreSettings(Section):
    id: Identifier = Field(examples=["SH001"], description="store id, as registered with the central service")
    name: str = Field(min_length=1, max_length=64, examples=["上海徐汇店"])
    timezone: str = Field("Asia/Shanghai", examples=["Asia/Shanghai"])
    business_day_cutoff_hour: int = Field(
        4, ge=0, le=23, examples=[4], description="sales before this local hour count for the previous day"
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, OSError) as exc:  # OSError: a folder ("America"), a long name
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


class StationSettings(Section):
    id: Identifier = Field(examples=["T01"], description="this till or kiosk, unique within the store")
    kind: Literal["till", "kiosk"] = Field("till", examples=["till"])
    name: str = Field("", max_length=32, examples=["1号收银台"])


class HelpSettings(Section):
    """Where a kiosk's "call staff" goes: the till whose screen shows it."""

    till_url: str | None = Field(
        None, examples=["http://192.168.1.20:8765"], description="the till agent's local API; unset: the kiosk alone"
    )
    till_token: SecretStr = Field(
        SecretStr(""),
        examples=["set POS_EDGE_HELP__TILL_TOKEN instead of writing it here"],
        description="the till's api.token, sent with each call",
    )

    @field_validator("till_url")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("must be the till agent's http(s) URL, e.g. http://192.168.1.20:8765")
        return value.rstrip("/") if value else value


class CentralSettings(Section):
    url: str = Field(examples=["https://central.example.com"])
    token: SecretStr = Field(SecretStr(""), examples=["set POS_EDGE_CENTRAL__TOKEN instead of writing it here"])
    connect_timeout_s: float = Field(3.0, gt=0, le=60, examples=[3.0])
    read_timeout_s: float = Field(10.0, gt=0, le=120, examples=[10.0])
    push_interval_s: int = Field(15, ge=1, le=3600, examples=[15], description="how often the outbox is pushed")
    sync_interval_s: int = Field(60, ge=5, le=3600, examples=[60], description="how often member changes are pulled")
    batch_size: int = Field(200, ge=1, le=1000, examples=[200], description="journal rows per push")
    page_size: int = Field(1000, ge=10, le=10000, examples=[1000], description="member changes asked per page")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")


def _device_url(value: str, schemes: tuple[str, ...]) -> str:
    scheme = urlsplit(value).scheme
    if scheme not in schemes:
        raise ValueError(f"scheme {scheme or '(none)'!r} not supported here; use one of {', '.join(schemes)}")
    return value


class ScannerSettings(Section):
    id: Identifier = Field(examples=["scanner-1"])
    url: str = Field(examples=["serial:///dev/serial/by-id/usb-Honeywell_1900-if00?baudrate=9600", "hid://0c2e:0b61"])

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        return _device_url(value, ("serial", "hid", "sim"))


class CameraSettings(Section):
    id: Identifier = Field("camera", examples=["camera"])
    url: str = Field(examples=["camera:0", "camera:///dev/v4l/by-id/usb-cam-video-index0"])
    decoder: Literal["zxing", "pyzbar"] = Field("zxing", examples=["zxing"])
    formats: tuple[Literal["qr", "code128", "ean13", "ean8", "upca"], ...] = Field(
        ("qr", "code128"), min_length=1, examples=[["qr", "code128"]]
    )
    roi: tuple[float, float, float, float] | None = Field(
        None, examples=[[0.25, 0.25, 0.5, 0.5]], description="x, y, width, height as fractions of the frame"
    )

    @field_validator("roi")
    @classmethod
    def _inside_frame(cls, value: tuple[float, float, float, float] | None) -> tuple[float, float, float, float] | None:
        if value is not None:
            x, y, w, h = value
            if not (0 <= x < 1 and 0 <= y < 1 and 0 < w <= 1 - x and 0 < h <= 1 - y):
                raise ValueError("must lie inside the frame: 0 <= x, y; 0 < width <= 1 - x; 0 < height <= 1 - y")
        return value

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        return _device_url(value, ("camera",))


class PrinterSettings(Section):
    id: Identifier = Field("printer", examples=["printer"])
    url: str = Field(examples=["tcp://192.168.1.50:9100", "usb://0416:5011", "file:///dev/usb/lp0"])
    profile: str = Field("default", examples=["default", "TM-T88V"], description="python-escpos capability profile")
    paper_width_mm: Literal[58, 80] = Field(80, examples=[80])
    text_encoding: Literal["gb18030", "gbk", "big5", "raster"] = Field(
        "gb18030", examples=["gb18030"], description="the printer's Chinese font encoding, or raster without one"
    )
    native_qr: bool = Field(True, examples=[True], description="false prints QR codes as images")
    cut: bool = Field(True, examples=[True])

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        return _device_url(value, ("tcp", "usb", "file", "serial", "sim"))

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, value: str) -> str:
        from escpos.capabilities import get_profile  # loaded only when a printer is configured

        try:
            get_profile(value)
        except KeyError:
            raise ValueError(
                f"unknown printer profile {value!r}; 'default' or a model such as TM-T88V, TM-T20II, POS-5890"
            ) from None
        return value


class DeviceSettings(Section):
    scanners: tuple[ScannerSettings, ...] = ()
    camera: CameraSettings | None = None
    printer: PrinterSettings | None = None


class ReceiptSettings(Section):
    e_receipt_url: str = Field(
        "",
        examples=["https://central.example.com/e/{token}"],
        description=(
            "the e-receipt link in the sale receipt's QR code; {token} is replaced by the sale's unguessable token "
            "(needs privacy.phone_hash_key); empty: central's page, {central.url}/e/{token}"
        ),
    )
    address: str = Field("", max_length=64, examples=["上海市徐汇区漕溪北路88号"])
    footer: tuple[str, ...] = Field(("谢谢惠顾，欢迎再次光临",), examples=[["谢谢惠顾，欢迎再次光临"]])

    @field_validator("e_receipt_url")
    @classmethod
    def _template(cls, value: str) -> str:
        if not value:
            return value  # central's own page
        has_token, has_id = "{token}" in value, "{transaction_id}" in value
        if has_token and has_id:
            raise ValueError("use {token} alone: {transaction_id} would put the sale's id back in the link")
        if not (has_token or has_id):
            raise ValueError(
                "must contain {token}, where the sale's e-receipt token goes (or leave it empty for central's page)"
            )
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL")
        return value


class CodeSettings(Section):
    card_patterns: tuple[str, ...] = Field((), examples=[["16[0-9]{16}", "8800[0-9]{9}"]])
    coupon_pattern: str | None = Field(None, examples=["CP[0-9A-Z]{10}"])
    guide_pattern: str | None = Field(None, examples=["G[0-9]{5}"])

    @field_validator("card_patterns")
    @classmethod
    def _patterns(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        for value in values:
            cls._pattern(value)
        return values

    @field_validator("coupon_pattern", "guide_pattern")
    @classmethod
    def _pattern(cls, value: str | None) -> str | None:
        if value is not None and (problem := validate_pattern(value)):
            raise ValueError(problem)
        return value

    def rules(self) -> CodeRules:
        return CodeRules(self.card_patterns, self.coupon_pattern, self.guide_pattern)


class MemberCodeSettings(Section):
    window_s: int = Field(120, ge=10, le=600, examples=[120], description="how long a member code is accepted")
    clock_skew_s: int = Field(30, ge=0, le=300, examples=[30])


# Tier names as a Chinese customer reads them, for the usual tier codes; `points.tiers.<code>.name` overrides.
TIER_NAMES_ZH = {
    "normal": "会员",
    "regular": "会员",
    "member": "会员",
    "silver": "银卡会员",
    "gold": "金卡会员",
    "platinum": "白金会员",
    "diamond": "钻石会员",
}


class TierSettings(Section):
    name: str = Field("", max_length=16, examples=["银卡会员"], description="shown on receipts and screens")
    discount_percent: int = Field(0, ge=0, le=90, examples=[5])
    earn_multiplier_percent: int = Field(100, ge=0, le=1000, examples=[150])


class PointsSettings(Section):
    earn_per_yuan: int = Field(1, ge=0, le=100, examples=[1], description="points per whole yuan paid")
    fen_per_point: int = Field(1, ge=1, le=10000, examples=[1], description="value of one point when redeemed")
    max_redeem_percent: int = Field(50, ge=0, le=100, examples=[50], description="cap as a share of the basket")
    excluded_categories: tuple[str, ...] = Field((), examples=[["tobacco", "gift_card"]])
    tiers: dict[str, TierSettings] = Field(default_factory=dict, examples=[{"gold": {"discount_percent": 5}}])

    def tier_name(self, tier: str) -> str:
        """The tier as customers read it: its settings' name, the usual Chinese name, or the code itself."""
        settings = self.tiers.get(tier)
        return (settings.name if settings else "") or TIER_NAMES_ZH.get(tier, tier)


class OfflineSettings(Section):
    redeem_cap_points_per_day: int = Field(500, ge=0, examples=[500])
    probe_timeout_s: float = Field(1.0, gt=0, le=10, examples=[1.0])


class CatalogItem(Section):
    """A product the agent can price by itself (a kiosk without POS software); the POS owns prices otherwise."""

    gtin: str = Field(pattern=r"^[0-9]{8,14}$", examples=["6901234567892"])
    name: str = Field(min_length=1, max_length=40, examples=["矿泉水 550ml"])
    price_fen: int = Field(ge=0, le=10_000_000, examples=[200])
    category: str = Field("", max_length=32, examples=[""])
    weighed: bool = Field(False, description="sold by weight: a kiosk sends the customer to a cashier")


class CheckoutSettings(Section):
    providers: tuple[Literal["wechat", "alipay"], ...] = Field(
        ("wechat", "alipay"), examples=[["wechat", "alipay"]], description="payment codes this store takes"
    )
    code_payment_limit_s: int = Field(
        60,
        ge=15,
        le=300,
        examples=[60],
        description="how long the till waits for the customer to confirm a code payment before reversing it",
    )
    payment_description: str = Field(
        "", max_length=32, examples=["消费"], description="shown to the payer after the store name"
    )
    catalog: tuple[CatalogItem, ...] = Field((), description="products a kiosk can sell without POS software")
    coupons_per_sale: int = Field(
        1, ge=1, le=3, examples=[1], description="coupons one sale may use, scanned or applied by the till itself"
    )


# agent.approval.hash_secret's form: scrypt$N$r$p$salt$key, salt and key in base64.
SECRET_HASH_PATTERN = r"^scrypt\$[0-9]+\$[0-9]+\$[0-9]+\$[A-Za-z0-9+/]+=*\$[A-Za-z0-9+/]+=*$"
ApprovalAction = Literal["refund", "void", "price_override", "reprint"]


class SupervisorSettings(Section):
    id: Identifier = Field(examples=["S001"], description="recorded as `approved_by` with what they approved")
    name: str = Field(min_length=1, max_length=32, examples=["王店长"])
    pin_hash: str | None = Field(
        None,
        pattern=SECRET_HASH_PATTERN,
        examples=["scrypt$16384$8$1$…$…  (pos-edge hash-secret)"],
        description="their PIN (4-12 digits), hashed by `pos-edge hash-secret`; never the PIN itself",
    )
    card_hash: str | None = Field(
        None, pattern=SECRET_HASH_PATTERN, description="the text of their supervisor card, hashed the same way"
    )

    @model_validator(mode="after")
    def _can_approve(self) -> SupervisorSettings:
        if self.pin_hash is None and self.card_hash is None:
            raise ValueError("a supervisor needs pin_hash or card_hash (make one with `pos-edge hash-secret`)")
        return self


class ApprovalSettings(Section):
    actions: tuple[ApprovalAction, ...] = Field(
        (),
        examples=[["refund", "void", "price_override", "reprint"]],
        description="what needs a supervisor's PIN or card: refund, void (cancelling a sale in which money was "
        "taken), price_override (a line below or above its list price), reprint (after the first reprint)",
    )
    supervisors: tuple[SupervisorSettings, ...] = ()
    wrong_tries: int = Field(5, ge=1, le=20, description="wrong PINs or cards in a row before the lock-out")
    lockout_minutes: int = Field(5, ge=1, le=120, description="how long every try is refused after that")

    @model_validator(mode="after")
    def _someone_approves(self) -> ApprovalSettings:
        if self.actions and not self.supervisors:
            raise ValueError(
                "approval.actions needs at least one [[approval.supervisors]] (or set approval.actions = [])"
            )
        ids = [s.id for s in self.supervisors]
        if len(ids) != len(set(ids)):
            raise ValueError("two approval.supervisors have the same id")
        return self


class ApiSettings(Section):
    host: str = Field("127.0.0.1", examples=["127.0.0.1"])
    port: int = Field(8765, ge=1, le=65535, examples=[8765])
    token: SecretStr = Field(SecretStr(""), examples=["set POS_EDGE_API__TOKEN instead of writing it here"])


class StorageSettings(Section):
    database: Path = Field(Path("/var/lib/pos-edge/agent.db"), examples=["/var/lib/pos-edge/agent.db"])
    backup_dir: Path | None = Field(
        None,
        examples=["/var/lib/pos-edge/backups"],
        description="where daily backups go; by default a backups folder next to the database",
    )
    backup_keep_days: int = Field(
        7, ge=1, le=365, examples=[7], description="backups older than this are deleted (never the newest)"
    )
    journal_retention_days: int = Field(
        180,
        ge=30,
        le=3650,
        examples=[180],
        description="transactions central confirmed are purged from the till after this; also how old a sale the till can still refund",
    )
    print_job_retention_days: int = Field(
        3,
        ge=1,
        le=3650,
        examples=[3],
        description="printed receipts' bytes are purged after this (a reprint is rendered again from the journal)",
    )
    member_retention_days: int = Field(
        365,
        ge=30,
        le=3650,
        examples=[365],
        description="cached members not identified here for this long lose their personal data on the till",
    )
    min_free_mb: int = Field(
        256,
        ge=16,
        le=1_000_000,
        examples=[256],
        description="below this much free disk the till refuses new sales, before SQLite could fail mid-write",
    )

    @field_validator("database", "backup_dir")
    @classmethod
    def _no_nul(cls, value: Path | None) -> Path | None:
        if value is not None and "\x00" in str(value):  # no file system takes it; os calls would raise ValueError
            raise ValueError("must not contain a NUL character")
        return value

    @property
    def backup_folder(self) -> Path:
        return self.backup_dir if self.backup_dir is not None else self.database.parent / "backups"


class PrivacySettings(Section):
    phone_hash_key: SecretStr | None = Field(
        None,
        examples=["set POS_EDGE_PRIVACY__PHONE_HASH_KEY; same value as the central service"],
        description="key of the phone number hash, shared with the central service; without it, no phone lookup",
    )

    @field_validator("phone_hash_key")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters")
        return value

    def key_bytes(self) -> bytes | None:
        return None if self.phone_hash_key is None else self.phone_hash_key.get_secret_value().encode("utf-8")


class LoggingSettings(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", examples=["INFO"])


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        extra="forbid",
        frozen=True,
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        nested_model_default_partial_update=True,
    )

    store: StoreSettings
    station: StationSettings
    central: CentralSettings
    devices: DeviceSettings = DeviceSettings()
    receipt: ReceiptSettings = ReceiptSettings()
    codes: CodeSettings = CodeSettings()
    member_codes: MemberCodeSettings = MemberCodeSettings()
    points: PointsSettings = PointsSettings()
    offline: OfflineSettings = OfflineSettings()
    checkout: CheckoutSettings = CheckoutSettings()
    approval: ApprovalSettings = ApprovalSettings()
    help: HelpSettings = HelpSettings()
    api: ApiSettings = ApiSettings()
    storage: StorageSettings = StorageSettings()
    privacy: PrivacySettings = PrivacySettings()
    logging: LoggingSettings = LoggingSettings()

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ):
        # The environment overrides the file, key by key.
        return (env_settings, init_settings)

    @property
    def e_receipt_template(self) -> str:
        """The receipt's e-receipt link template: `receipt.e_receipt_url`, or central's page when that is empty."""
        return self.receipt.e_receipt_url or f"{self.central.url}/e/{{token}}"


SECRET_KEYS = ("central.token", "api.token", "privacy.phone_hash_key", "help.till_token")


class SettingsError(Exception):
    """The settings file cannot be used. `problems` holds one line per bad key."""

    def __init__(self, path: Path, problems: list[str]):
        self.path = path
        self.problems = problems
        super().__init__(f"{path}: " + "; ".join(problems))


@dataclass(frozen=True)
class LoadedSettings:
    settings: Settings
    warnings: tuple[str, ...]


def load_settings(path: str | os.PathLike[str]) -> LoadedSettings:
    """Read and validate a settings file; raise SettingsError naming every bad key."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SettingsError(path, ["file not found; start from config/example.toml"]) from None
    except OSError as exc:
        raise SettingsError(path, [f"cannot read: {exc.strerror}"]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise SettingsError(path, ["not UTF-8 text; save the file as UTF-8"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(path, [f"not valid TOML: {exc}"]) from None

    # Settings(**data) would take pydantic-settings' own arguments (_env_prefix, _secrets_dir, ...) from the file.
    reserved = [
        f"{key}: unknown key; known keys here: {', '.join(Settings.model_fields)}"
        for key in data
        if key.startswith("_")
    ]
    if reserved:
        raise SettingsError(path, reserved)
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        raise SettingsError(path, [_describe(error) for error in exc.errors()]) from None
    except EnvironmentValueError as exc:  # a list or table in the environment that is not JSON
        found = re.search(r'field "([^"]+)"', str(exc))
        key = found.group(1) if found else "(environment)"
        raise SettingsError(
            path,
            [
                f"{key}: a value set in the environment ({ENV_PREFIX}{key.upper()}...) is not valid JSON; lists and "
                f"tables there are JSON, e.g. {ENV_PREFIX}CODES__CARD_PATTERNS='[\"16[0-9]{{16}}\"]'"
            ],
        ) from None

    # A relative database or backup path is taken from the settings file's folder, wherever the agent is started.
    relative = {
        key: (path.parent / value).resolve()
        for key in ("database", "backup_dir")
        if (value := getattr(settings.storage, key)) is not None and not value.is_absolute()
    }
    if relative:
        settings = settings.model_copy(update={"storage": settings.storage.model_copy(update=relative)})

    warnings = []
    world_readable = path.stat().st_mode & stat.S_IROTH
    for key in SECRET_KEYS:
        section, name = key.split(".")
        if world_readable and data.get(section, {}).get(name):
            warnings.append(
                f"{key} is written in a file anyone on this machine can read; "
                f"run `chmod 600 {path}` or set {ENV_PREFIX}{section.upper()}__{name.upper()} instead"
            )
    if "{transaction_id}" in settings.receipt.e_receipt_url:
        warnings.append(
            "receipt.e_receipt_url puts the sale's id in the receipt's QR code, where anyone can guess the next one; "
            "use {token} instead (or leave it empty: central serves the e-receipt at {central.url}/e/{token})"
        )
    return LoadedSettings(settings, tuple(warnings))


def _describe(error: ErrorDetails) -> str:
    loc = error["loc"]
    key = _dotted(loc)
    if error["type"] == "extra_forbidden":
        known = _known_keys(loc[:-1])
        guess = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f"did you mean {guess[0]!r}?" if guess else f"known keys here: {', '.join(known)}"
        return f"{key}: unknown key; {hint}"
    message = error["msg"].removeprefix("Value error, ")
    field = _field_at(loc)
    if field is not None and field.examples:
        example = field.examples[0]
        shown = f'"{example}"' if isinstance(example, str) else _toml_value(example)
        return f"{key}: {message}; for example: {loc[-1]} = {shown}"
    return f"{key}: {message}"


def _toml_value(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def _dotted(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The model class inside `X`, `X | None`, `tuple[X, ...]` or `dict[str, X]`, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        if (found := _model_of(arg)) is not None:
            return found
    return None


def _walk(loc: tuple[Any, ...]) -> tuple[type[BaseModel] | None, FieldInfo | None]:
    model: type[BaseModel] | None = Settings
    field: FieldInfo | None = None
    for part in loc:
        if model is None:
            return None, None
        if isinstance(part, int) or part not in model.model_fields:
            # A list index or a dict key: stay on the item model.
            continue
        field = model.model_fields[part]
        model = _model_of(field.annotation)
    return model, field


def _field_at(loc: tuple[Any, ...]) -> FieldInfo | None:
    return _walk(loc)[1]


def _known_keys(loc: tuple[Any, ...]) -> list[str]:
    model, _ = _walk(loc)
    return list(model.model_fields) if model else []
