"""Settings: one TOML file, environment overrides, errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from central.config import SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_the_demo_settings_put_the_database_under_dot_demo():
    settings = load_settings(ROOT / "config" / "central-demo.toml").settings
    assert settings.database_url == f"sqlite:///{ROOT / '.demo' / 'central.db'}"
    assert settings.port == 8800 and settings.phone_hash_key.get_secret_value() == "demo-phone-hash-key-not-secret"


def test_the_example_settings_are_valid_once_the_key_is_in_the_environment(monkeypatch):
    with pytest.raises(SettingsError, match="phone_hash_key: required"):
        load_settings(ROOT / "config" / "central-example.toml")
    monkeypatch.setenv("POS_CENTRAL_PHONE_HASH_KEY", "a-real-secret-of-enough-length")
    settings = load_settings(ROOT / "config" / "central-example.toml").settings
    assert settings.environment == "production" and settings.max_page_size == 1000


def test_environment_overrides_the_file(tmp_path, monkeypatch):
    path = tmp_path / "central.toml"
    path.write_text('phone_hash_key = "file-key-0123456789"\nport = 8800\ndatabase_url = "sqlite:///db/c.db"\n')
    monkeypatch.setenv("POS_CENTRAL_PORT", "9900")
    settings = load_settings(path).settings
    assert settings.port == 9900 and settings.database_url == f"sqlite:///{tmp_path / 'db' / 'c.db'}"


def test_the_public_demo_key_is_refused_in_production(tmp_path):
    path = tmp_path / "central.toml"
    path.write_text('phone_hash_key = "demo-phone-hash-key-not-secret"\n')
    with pytest.raises(SettingsError, match="public demo key"):
        load_settings(path)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('phone_hash_key = "0123456789abcdef"\nmax_page = 5\n', "max_page: unknown key; did you mean 'max_page_size'?"),
        (
            'phone_hash_key = "0123456789abcdef"\ndatabase_url = "mysql://x"\n',
            "database_url: must be a sqlite:/// or postgresql:// URL",
        ),
        (
            'phone_hash_key = "0123456789abcdef"\nmax_page_size = 10\ndefault_page_size = 50\n',
            "default_page_size must not exceed max_page_size",
        ),
        ("phone_hash_key = [", "not valid TOML"),
    ],
)
def test_bad_settings_name_the_key(tmp_path, text, problem):
    path = tmp_path / "central.toml"
    path.write_text(text)
    with pytest.raises(SettingsError) as caught:
        load_settings(path)
    assert any(problem in line for line in caught.value.problems), caught.value.problems
