"""The central service's settings: one TOML file, validated at start, with errors that name the key and the fix.

Environment variables override the file key by key (`POS_CENTRAL_PHONE_HASH_KEY=...`), so secrets can stay out
of it. Outside `environment = "development"` the public demo key is refused.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

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
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", examples=["INFO"])

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):
        # The environment overrides the file.
        return (env_settings, init_settings)

    @field_validator("phone_hash_key")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters")
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
        return self

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
    return LoadedSettings(settings.model_copy(update={"database_url": resolve_sqlite_path(settings.database_url, path.parent)}), path)


def resolve_sqlite_path(url: str, base: Path) -> str:
    """`sqlite:///relative/path.db` is taken from `base` (the settings file's folder), wherever we are started."""
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        return url
    rest = url[len(prefix):]
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
