"""Bill reconciliation: the simulator's settlement bill (downloadbill over HTTP) against central's payments, by
the CLI and next to the store's day summary."""

from __future__ import annotations

from datetime import UTC, datetime

from click.testing import CliRunner

from central.cli import cli
from central.payments.wechat import BEIJING
from tests.central import test_payments as base
from tests.central.test_payments import code, final_answer, follow, pay

# The payment fixtures: a central service with WeChat Pay pointed at a simulator.
from tests.support.credentials import APPID, MCH_ID, WECHAT_KEY

paying, sim = base.paying, base.sim


def test_the_bill_finds_every_kind_of_difference(paying, sim, tmp_path):
    server, client = paying
    matched = pay(client, code("00"), 1000).json()["out_trade_no"]
    gave_up = pay(client, code("12"), 2000).json()["out_trade_no"]
    assert follow(client, gave_up)["state"] == "REVERSED"
    # The customer's payment went through at WeChat after all (e.g. a reverse that never reached it).
    late = sim.orders[gave_up]
    late.state, late.paid_at = "SUCCESS", datetime.now(UTC)
    mismatch = pay(client, code("00"), 3000).json()["out_trade_no"]
    sim.orders[mismatch].amount_fen = 3100
    missing = pay(client, code("00"), 4000).json()["out_trade_no"]
    del sim.orders[missing]
    stranger = sim.add_order("S1T09UNKNOWN0001", 777, device_info="S1-T09")
    failed = final_answer(client, pay(client, code("32"), 500).json())
    assert failed["state"] == "FAILED"

    day = datetime.now(UTC).astimezone(BEIJING).date()
    settings = tmp_path / "central.toml"
    settings.write_text(
        f'environment = "development"\ndatabase_url = "{server.settings.database_url}"\nphone_hash_key = "{server.settings.phone_hash_key.get_secret_value()}"\n'
        f'wechat_base_url = "{sim.url}"\nwechat_appid = "{APPID}"\nwechat_mch_id = "{MCH_ID}"\nwechat_api_key = "{WECHAT_KEY}"\n'
    )
    result = CliRunner().invoke(cli, ["payments", "reconcile", "--config", str(settings), "--day", day.isoformat()])
    assert result.exit_code == 0, result.output
    assert f"wechat {day}: 4 bill rows, 1 matched, 4 to settle" in result.output
    lines = {line.split()[1]: line for line in result.output.splitlines()[1:]}
    assert lines[gave_up].split()[0] == "charged_not_paid_at_store" and "(REVERSED)" in lines[gave_up]
    assert (
        lines[stranger.out_trade_no].split()[0] == "charged_not_paid_at_store"
        and "central has no such payment" in lines[stranger.out_trade_no]
    )
    assert lines[mismatch].split()[0] == "amount_mismatch" and "bill 3100 fen, central 3000 fen" in lines[mismatch]
    assert lines[missing].split()[0] == "missing_from_bill"
    assert matched not in lines

    summary = client.get(f"/v1/stores/S1/days/{day}/payments").json()
    assert summary["counts"] == {"FAILED": 1, "REVERSED": 1, "SUCCESS": 3} and summary["paid_fen"] == {"wechat": 8000}
    assert [(c["provider"], c["bill_rows"], c["matched"], c["issues"]) for c in summary["bill_checks"]] == [
        ("wechat", 4, 1, 4)
    ]
    # The order central never saw is the store's by its device_info (store-station).
    assert {(i["out_trade_no"], i["kind"]) for i in summary["issues"]} == {
        (gave_up, "charged_not_paid_at_store"),
        (stranger.out_trade_no, "charged_not_paid_at_store"),
        (mismatch, "amount_mismatch"),
        (missing, "missing_from_bill"),
    }

    # Settled at the provider (refunded), a second run replaces the result.
    del sim.orders[gave_up], sim.orders[stranger.out_trade_no]
    sim.orders[mismatch].amount_fen = 3000
    again = CliRunner().invoke(
        cli, ["payments", "reconcile", "--config", str(settings), "--day", day.isoformat(), "--provider", "wechat"]
    )
    assert "2 bill rows, 2 matched, 1 to settle" in again.output
    assert [i["kind"] for i in client.get(f"/v1/stores/S1/days/{day}/payments").json()["issues"]] == [
        "missing_from_bill"
    ]
    other = server.add_store("S2")
    with server.client(other) as client2:
        assert client2.get(f"/v1/stores/S1/days/{day}/payments").status_code == 403
        assert client2.get(f"/v1/stores/S2/days/{day}/payments").json()["issues"] == []


def test_a_day_without_a_bill_and_a_provider_not_configured(paying, sim, tmp_path):
    server, _client = paying
    settings = tmp_path / "central.toml"
    settings.write_text(
        f'environment = "development"\ndatabase_url = "{server.settings.database_url}"\nphone_hash_key = "{server.settings.phone_hash_key.get_secret_value()}"\n'
        f'wechat_base_url = "{sim.url}"\nwechat_appid = "{APPID}"\nwechat_mch_id = "{MCH_ID}"\nwechat_api_key = "{WECHAT_KEY}"\n'
    )
    quiet = CliRunner().invoke(cli, ["payments", "reconcile", "--config", str(settings), "--day", "2020-01-01"])
    assert quiet.exit_code == 0 and "wechat 2020-01-01: 0 bill rows, 0 matched, 0 to settle" in quiet.output
    alipay = CliRunner().invoke(
        cli, ["payments", "reconcile", "--config", str(settings), "--day", "2020-01-01", "--provider", "alipay"]
    )
    assert alipay.exit_code == 2 and "no alipay is configured" in alipay.output
