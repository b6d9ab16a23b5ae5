"""Member-card points sync: ingested transactions queue pushes for members holding a WeChat member card, and the
worker pushes them to a wire-level stub of the card API (the simulator's cgi-bin/token and updateuser)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from central.cli import cli
from central.identity import IdentifierTaken
from central.models import CardSyncJob
from central.payments.cards import register_card
from central.payments.simulators import serve_in_thread
from central.payments.simulators.wechat import WeChatSimulator
from tests.central.rows import journal_row
from tests.support.poll import eventually

APPID, MCH_ID, KEY, SECRET = (
    "wx9b1d7e3a5c2f8046",
    "1900000109",
    "8f14e45fceea167a5a36dedd4bea2543",
    "card-secret-0123456789",
)
CARD = "pbLatjk4T4Hx-QmEd-bHkVLBFbLR"


@pytest.fixture
def card_api():
    stub = WeChatSimulator(appid=APPID, mch_id=MCH_ID, api_key=KEY, card_appsecret=SECRET)
    served = serve_in_thread(stub.app())
    stub.url = served.url
    yield stub
    served.stop()


@pytest.fixture
def syncing(central_factory, card_api):
    server = central_factory(
        wechat_card_api_base_url=card_api.url,
        wechat_appid=APPID,
        wechat_card_appsecret=SECRET,
        wechat_card_sync_seconds=0.05,
    )
    store = server.add_store("S1")
    with server.client(store) as client:
        yield server, client


def jobs(server) -> list[tuple[str, int]]:
    table = CardSyncJob.__table__
    with server.session() as session:
        return [(r.state, r.attempts) for r in session.execute(sa.select(table).order_by(table.c.id))]


def test_points_changes_are_pushed_with_add_bonus_and_the_absolute_bonus(syncing, card_api):
    server, client = syncing
    holder = server.add_member(points=500)
    other = server.add_member(points=70)  # no card: nothing is pushed for them
    with server.session() as session:
        register_card(session, holder, CARD, "123456789012", datetime.now(UTC))
        session.commit()
    card_api.card_failures = 1  # the first push meets a WeChat system error and is retried

    sale = journal_row(2500, member_id=holder, points_earned=25)
    client.post(
        "/v1/transactions:batch", json={"transactions": [sale, journal_row(800, member_id=other, points_earned=8)]}
    ).raise_for_status()
    eventually(lambda: any(call.answered == 0 for call in card_api.card_calls))
    failed, pushed = card_api.card_calls
    assert failed.answered == -1 and failed.body == pushed.body
    assert pushed.body["card_id"] == CARD and pushed.body["code"] == "123456789012"
    assert (pushed.body["add_bonus"], pushed.body["bonus"]) == (25, 525) and pushed.body[
        "record_bonus"
    ] == "消费获得积分"
    eventually(lambda: jobs(server) == [("done", 2)])  # the worker books the push once WeChat's answer is back

    # The same batch again books nothing and pushes nothing.
    client.post("/v1/transactions:batch", json={"transactions": [sale]}).raise_for_status()
    # A redemption books two entries (earn and redeem): two pushes, in order, each with the balance then.
    client.post(
        "/v1/transactions:batch",
        json={"transactions": [journal_row(1000, member_id=holder, points_earned=10, points_redeemed=100)]},
    ).raise_for_status()
    eventually(lambda: len(jobs(server)) == 3 and all(state == "done" for state, _ in jobs(server)))
    later = [call.body for call in card_api.card_calls[2:]]
    assert [(b["add_bonus"], b["record_bonus"]) for b in later] == [(10, "消费获得积分"), (-100, "积分抵扣消费")]
    assert later[-1]["bonus"] == 525 + 10 - 100 and len(card_api.card_calls) == 4


def test_a_card_belongs_to_one_member_and_is_registered_by_the_cli(syncing, tmp_path):
    server, _client = syncing
    first, second = server.add_member(), server.add_member()
    settings = tmp_path / "central.toml"
    settings.write_text(
        f'environment = "development"\ndatabase_url = "{server.settings.database_url}"\nphone_hash_key = "{server.settings.phone_hash_key.get_secret_value()}"\n'
    )
    done = CliRunner().invoke(
        cli, ["member", "card", first, "--card-id", CARD, "--code", "000111", "--config", str(settings)]
    )
    assert done.exit_code == 0 and f"member {first} holds card {CARD}" in done.output
    again = CliRunner().invoke(
        cli, ["member", "card", first, "--card-id", CARD, "--code", "000111", "--config", str(settings)]
    )
    assert again.exit_code == 0
    with server.session() as session, pytest.raises(IdentifierTaken):
        register_card(session, second, CARD, "000111", datetime.now(UTC))
