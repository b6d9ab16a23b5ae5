"""A settings file is either used as written or refused with every bad key named and a fix shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.settings import SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[2]

MINIMAL = """
[store]
id = "SH001"
name = "上海徐汇店"

[station]
id = "T01"

[central]
url = "https://central.example.com"

[storage]
database = "agent.db"
"""


def write(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(SettingsError) as caught:
        load_settings(write(tmp_path, text))
    return caught.value.problems


@pytest.mark.parametrize("name", ["example.toml", "demo.toml", "demo-kiosk.toml"])
def test_shipped_settings_are_valid(name):
    loaded = load_settings(ROOT / "config" / name)
    assert loaded.settings.store.id


def test_the_demo_till_and_kiosk_are_two_stations_of_one_store_that_share_no_device_port_or_folder():
    """`make demo` runs both agents at once: a scan on one station's scanner must never reach the other, and
    neither may write into the other's database, receipts or backups; both sell the same things the same way."""
    till = load_settings(ROOT / "config" / "demo.toml").settings
    kiosk = load_settings(ROOT / "config" / "demo-kiosk.toml").settings
    assert (till.station.kind, kiosk.station.kind) == ("till", "kiosk")
    assert till.station.id != kiosk.station.id
    assert till.store == kiosk.store and till.central.url == kiosk.central.url
    assert till.api.port != kiosk.api.port
    # Both stations' receipts link to central's e-receipt page, which knows every sale of the store.
    assert till.e_receipt_template == kiosk.e_receipt_template == f"{till.central.url}/e/{{token}}"
    till_devices = {d.id for d in till.devices.scanners} | {d.url for d in till.devices.scanners}
    kiosk_devices = {d.id for d in kiosk.devices.scanners} | {d.url for d in kiosk.devices.scanners}
    assert till_devices and kiosk_devices and not till_devices & kiosk_devices
    assert till.devices.printer and kiosk.devices.printer
    assert till.devices.printer.url != kiosk.devices.printer.url
    # Receipts (sim:// printer) and backups go next to the database: a folder each.
    assert till.storage.database.parent != kiosk.storage.database.parent
    assert till.storage.backup_folder != kiosk.storage.backup_folder
    assert till.checkout.catalog == kiosk.checkout.catalog and till.checkout.catalog
    assert till.points == kiosk.points and till.codes == kiosk.codes


def test_minimal_settings_take_defaults(tmp_path):
    settings = load_settings(write(tmp_path, MINIMAL)).settings
    assert settings.store.timezone == "Asia/Shanghai"
    assert settings.member_codes.window_s == 120
    assert settings.api.host == "127.0.0.1"
    assert settings.storage.database == tmp_path / "agent.db"  # relative to the file's folder


def test_typo_is_named_with_a_suggestion(tmp_path):
    found = problems(
        tmp_path, MINIMAL.replace('name = "上海徐汇店"', 'name = "上海徐汇店"\nbusiness_day_cutof_hour = 4')
    )
    assert found == ["store.business_day_cutof_hour: unknown key; did you mean 'business_day_cutoff_hour'?"]


def test_unknown_section_lists_the_known_ones(tmp_path):
    (found,) = problems(tmp_path, MINIMAL + "\n[printers]\nurl = 'tcp://x:9100'\n")
    assert found.startswith("printers: unknown key;")


def test_every_bad_key_is_reported_with_an_example(tmp_path):
    text = (
        MINIMAL.replace('[station]\nid = "T01"', '[station]\nid = "T 01"\nkind = "cashier"')
        + '\n[api]\nport = "eighty"\n'
    )
    found = problems(tmp_path, text)
    assert len(found) == 3
    assert any(p.startswith("station.id: ") and 'for example: id = "T01"' in p for p in found)
    assert any(p.startswith("station.kind: ") and "'till' or 'kiosk'" in p for p in found)
    assert any(p.startswith("api.port: ") and "for example: port = 8765" in p for p in found)


def test_missing_required_key(tmp_path):
    found = problems(tmp_path, MINIMAL.replace('id = "SH001"\n', ""))
    assert found == ['store.id: Field required; for example: id = "SH001"']


@pytest.mark.parametrize(
    "replace, expected",
    [
        (('timezone = "UTC"', 'timezone = "Asia/Shangai"'), "store.timezone: unknown time zone 'Asia/Shangai'"),
        (('url = "https://central.example.com"', 'url = "central.example.com"'), "central.url: must be an http(s) URL"),
    ],
)
def test_values_are_checked_for_meaning(tmp_path, replace, expected):
    text = MINIMAL.replace('name = "上海徐汇店"', 'name = "上海徐汇店"\ntimezone = "UTC"').replace(*replace)
    assert any(p.startswith(expected) for p in problems(tmp_path, text))


def test_device_urls_and_code_patterns_are_checked(tmp_path):
    text = (
        MINIMAL
        + """
[[devices.scanners]]
id = "s1"
url = "tcp://10.0.0.5:9100"

[devices.printer]
url = "lpt://1"

[codes]
card_patterns = ['16[0-9]{16}', '([0-9]']
"""
    )
    found = problems(tmp_path, text)
    assert any(
        p.startswith("devices.scanners[0].url: scheme 'tcp' not supported here; use one of serial, hid") for p in found
    )
    assert any(p.startswith("devices.printer.url: scheme 'lpt'") and "tcp://192.168.1.50:9100" in p for p in found)
    assert any(p.startswith("codes.card_patterns: ") for p in found)


def test_malformed_toml_names_the_line(tmp_path):
    (found,) = problems(tmp_path, MINIMAL + '\n[api]\nport = 80\nhost = "127.0.0.1\n')
    assert found.startswith("not valid TOML:") and "line" in found


def test_not_utf8_and_missing_file(tmp_path):
    path = tmp_path / "gbk.toml"
    path.write_bytes(MINIMAL.encode("gbk"))
    with pytest.raises(SettingsError, match="UTF-8"):
        load_settings(path)
    with pytest.raises(SettingsError, match="file not found; start from config/example.toml"):
        load_settings(tmp_path / "absent.toml")


def test_environment_overrides_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("POS_EDGE_CENTRAL__TOKEN", "from-env")
    monkeypatch.setenv("POS_EDGE_API__PORT", "9000")
    settings = load_settings(write(tmp_path, MINIMAL + "\n[api]\nport = 8000\n")).settings
    assert settings.central.token.get_secret_value() == "from-env"
    assert settings.central.url == "https://central.example.com"  # the rest of the section stays
    assert settings.api.port == 9000


def test_bad_environment_value_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("POS_EDGE_API__PORT", "eighty")
    assert any(p.startswith("api.port:") for p in problems(tmp_path, MINIMAL))


def test_secret_in_a_world_readable_file_is_warned_about(tmp_path):
    text = MINIMAL.replace(
        'url = "https://central.example.com"', 'url = "https://central.example.com"\ntoken = "s3cret"'
    )
    warnings = load_settings(write(tmp_path, text, mode=0o644)).warnings
    assert len(warnings) == 1 and "central.token" in warnings[0] and "chmod 600" in warnings[0]
    assert "s3cret" not in warnings[0]
    assert load_settings(write(tmp_path, text, mode=0o600)).warnings == ()


def test_short_phone_hash_key_is_refused(tmp_path):
    found = problems(tmp_path, MINIMAL + '\n[privacy]\nphone_hash_key = "short"\n')
    assert found[0].startswith("privacy.phone_hash_key: must be at least 16 characters")


def test_a_tier_reads_as_its_settings_name_then_the_usual_chinese_name_then_its_code():
    from agent.settings import PointsSettings, TierSettings

    points = PointsSettings(tiers={"vip": TierSettings(name="尊享会员"), "gold": TierSettings()})
    assert points.tier_name("vip") == "尊享会员"
    assert points.tier_name("gold") == "金卡会员"
    assert points.tier_name("staff") == "staff"
