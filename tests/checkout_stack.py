"""A whole store on 127.0.0.1 for checkout tests: the real central service (SQLite), the WeChat Pay simulator
behind it, and the agent with a simulated scanner and printer serving its local API on a real socket.

`stack_factory(kind="till"|"kiosk", separate_process=False, ...)` builds one; `stack` is a till. With
`separate_process=True` the agent runs as `pos-edge run` in its own process, so a test can kill -9 it. Central pays
through WeChat Pay API v2 unless `wechat_api="v3"`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from agent.approval import hash_secret
from agent.db import open_database
from agent.runtime import build_app
from agent.settings import load_settings
from central import card, feed, keys
from central.models import Coupon
from central.payments.simulators import serve_in_thread
from central.payments.simulators.wechat import WeChatSimulator
from drivers.escpos_decode import TextLine, decode
from tests.central.plugin import CentralServer, central_settings
from tests.support.credentials import (
    API_TOKEN,
    APPID,
    MCH_ID,
    PHONE_KEY,
    SUPERVISOR_CARD,
    SUPERVISOR_ID,
    SUPERVISOR_PIN,
    WECHAT_KEY,
)
from tests.support.timings import STORE_PAYMENTS
from tests.support.wechat_v3 import v3_settings, v3_simulator

STORE = "S1"

_serial = iter(range(1, 10**9))


def wechat_code(scenario: str = "00", customer: str = "0001") -> str:
    """A fresh WeChat payment code; the simulator's scenario is picked by its last two digits."""
    return f"13{customer}{next(_serial):010d}{scenario}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


SETTINGS_TOML = """
[store]
id = "{store}"
name = "测试门店"
timezone = "Asia/Shanghai"

[station]
id = "T01"
kind = "{kind}"
name = "1号收银台"

[central]
url = "{central_url}"
connect_timeout_s = 1.0
read_timeout_s = 3.0
push_interval_s = 3600
sync_interval_s = 3600

[[devices.scanners]]
id = "scanner-1"
url = "sim://scanner-1"

[devices.printer]
id = "printer"
url = "sim://printer"
paper_width_mm = 80

[codes]
card_patterns = ['8800[0-9]{{9}}']
coupon_pattern = 'CP[0-9A-Z]{{10}}'
guide_pattern = 'G[0-9]{{5}}'

[points]
earn_per_yuan = 1
fen_per_point = 1
max_redeem_percent = 50
excluded_categories = ["tobacco"]

[points.tiers.gold]
discount_percent = 5
earn_multiplier_percent = 150

[offline]
redeem_cap_points_per_day = 300
probe_timeout_s = 3.0  # generous: a loaded test machine must not look like a WAN outage

[checkout]
providers = {providers}
code_payment_limit_s = {limit}

[[checkout.catalog]]
gtin = "6901234567892"
name = "矿泉水 550ml"
price_fen = 200

[api]
host = "127.0.0.1"
port = {port}

[storage]
database = "{database}"
"""


def _approval_toml(actions: tuple[str, ...]) -> str:
    """The `[approval]` section: `actions` need the test store's supervisor (PIN and card, hashed as a store would)."""
    if not actions:
        return ""
    return (
        "\n[approval]\nactions = [" + ", ".join(f'"{a}"' for a in actions) + "]\n\n[[approval.supervisors]]\n"
        f'id = "{SUPERVISOR_ID}"\nname = "王店长"\npin_hash = "{hash_secret(SUPERVISOR_PIN)}"\n'
        f'card_hash = "{hash_secret(SUPERVISOR_CARD)}"\n'
    )


class Stack:
    def __init__(
        self,
        tmp: Path,
        kind: str = "till",
        separate_process: bool = False,
        providers: tuple[str, ...] = ("wechat",),
        limit: int = 20,
        as_service: bool = False,
        approval: tuple[str, ...] = (),
        central_options: dict[str, Any] | None = None,
        extra_toml: str = "",
        wechat_api: str = "v2",
    ):
        self.tmp = tmp
        self.as_service = as_service  # separate process only: its log written as under systemd (journal stream)
        # WeChat Pay API v2 by default (the tests count `micropay`); "v3": central pays through v3 against the
        # simulator that answers both (tests/support/wechat_v3.py).
        v3: dict[str, Any] = {}
        if wechat_api == "v3":
            self.wechat: WeChatSimulator = v3_simulator(userpaying_seconds=0.3, slow_seconds=0.7)
            v3 = v3_settings(tmp / "wechat-v3")
        else:
            self.wechat = WeChatSimulator(
                appid=APPID, mch_id=MCH_ID, api_key=WECHAT_KEY, userpaying_seconds=0.3, slow_seconds=0.7
            )
        self._wechat_served = serve_in_thread(self.wechat.app())
        self.wechat.url = self._wechat_served.url
        self.central = CentralServer(
            central_settings(
                f"sqlite:///{tmp / 'central.db'}",
                wechat_base_url=self.wechat.url,
                wechat_appid=APPID,
                wechat_mch_id=MCH_ID,
                wechat_api_key=WECHAT_KEY,
                phone_hash_key=PHONE_KEY,
                **v3,
                **STORE_PAYMENTS | (central_options or {}),
            )
        )
        self.central.start()
        self.store = self.central.add_store(STORE)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = API_TOKEN
        self.database = tmp / "agent.db"
        self.config = tmp / "agent.toml"
        self.config.write_text(
            SETTINGS_TOML.format(
                store=STORE,
                kind=kind,
                central_url=self.central.url,
                port=self.port,
                database=self.database,
                providers="[" + ", ".join(f'"{p}"' for p in providers) + "]",
                limit=limit,
            )
            + _approval_toml(approval)
            + extra_toml,
            encoding="utf-8",
        )
        self.env = {
            "POS_EDGE_CENTRAL__TOKEN": self.store.token,
            "POS_EDGE_API__TOKEN": API_TOKEN,
            "POS_EDGE_PRIVACY__PHONE_HASH_KEY": PHONE_KEY,
        }
        self.separate_process = separate_process
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._process: subprocess.Popen | None = None
        self.api = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=15)

    # --- the agent -----------------------------------------------------------------------------------------

    def start(self) -> Stack:
        if self.separate_process:
            env = os.environ | self.env | {"PYTHONUNBUFFERED": "1"}
            self._log = open(self.tmp / "agent.log", "ab")
            if self.as_service:
                info = os.fstat(self._log.fileno())
                env["JOURNAL_STREAM"] = f"{info.st_dev}:{info.st_ino}"
            self._process = subprocess.Popen(
                [sys.executable, "-m", "agent", "run", "--config", str(self.config)],
                env=env,
                stdout=self._log,
                stderr=subprocess.STDOUT,
            )
        else:
            old = {name: os.environ.get(name) for name in self.env}
            os.environ.update(self.env)
            try:
                settings = load_settings(self.config).settings
            finally:
                for name, value in old.items():
                    os.environ.pop(name) if value is None else os.environ.__setitem__(name, value)
            self.app = build_app(settings)
            config = uvicorn.Config(
                self.app,
                host="127.0.0.1",
                port=self.port,
                log_config=None,
                access_log=False,
                lifespan="on",
                timeout_graceful_shutdown=1,
            )
            self._server = uvicorn.Server(config)
            self._thread = threading.Thread(target=self._server.run, name="agent", daemon=True)
            self._thread.start()
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(
                    f"the agent exited with {self._process.returncode}: {(self.tmp / 'agent.log').read_text()[-2000:]}"
                )
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200 and (
                    self._server is None or self._server.started
                ):
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError("the agent did not start")

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(15)
            self._server = self._thread = None
        if self._process is not None:
            if self._process.poll() is None:
                self._process.send_signal(signal.SIGTERM)
                self._process.wait(15)
            self._process = None

    def kill(self) -> None:
        """kill -9: no shutdown code runs."""
        assert self._process is not None, "kill() needs separate_process=True"
        self._process.kill()
        self._process.wait(10)
        self._process = None

    # --- shortcuts a test reads well with -----------------------------------------------------------------

    def scan(self, text: str, device: str = "scanner-1") -> None:
        answer = self.api.post(f"/v1/devices/{device}/scan", json={"text": text})
        assert answer.status_code == 202, answer.text

    def sync_now(self) -> dict:
        answer = self.api.post("/v1/sync")
        assert answer.status_code == 200, answer.text
        return answer.json()

    def add_member(
        self,
        *,
        points: int = 0,
        tier: str = "normal",
        display_name: str = "王*明",
        phone: str | None = None,
        card_no: str | None = None,
        payer: str | None = None,
    ) -> str:
        """A member at central; `payer`: a payment code whose simulated customer's openid is theirs."""
        identifiers = {}
        if card_no:
            identifiers["card_no"] = card_no
        if payer:
            identifiers[f"openid:{APPID}"] = self.wechat.openid_for(payer)
        return self.central.add_member(
            points=points, tier=tier, display_name=display_name, phone=phone, identifiers=identifiers
        )

    def add_coupon(
        self,
        member_id: str,
        title: str = "满30减5",
        *,
        kind: str = "amount_off",
        amount_off_fen: int = 500,
        percent_off: int = 0,
        threshold_fen: int = 3000,
        cap_fen: int | None = None,
        usable_offline: bool = False,
        valid_days: tuple[int, int] = (-1, 30),
    ) -> str:
        """A coupon issued at central to the member (the till hears of it with the next member pull); its code."""
        now = datetime.now(UTC)
        coupon = Coupon(
            code=card.new_coupon_code(),
            member_id=member_id,
            title=title,
            kind=kind,
            amount_off_fen=amount_off_fen,
            percent_off=percent_off,
            threshold_fen=threshold_fen,
            cap_fen=cap_fen,
            usable_offline=usable_offline,
            valid_from=now + timedelta(days=valid_days[0]),
            valid_until=now + timedelta(days=valid_days[1]),
        )
        with self.central.session() as session:
            feed.lock(session)
            code = card.issue_coupon(session, member_id, coupon).code
            session.commit()
        return code

    def member_code(self, member_id: str, seconds_ago: int = 0) -> str:
        """A member code as the member's phone shows it (codes of the same second are the same code)."""
        with self.central.session() as session:
            code = keys.member_code(session, member_id, datetime.now(UTC) - timedelta(seconds=seconds_ago))
            session.commit()
        return code

    def open_session(self) -> dict:
        answer = self.api.post("/v1/sessions")
        assert answer.status_code == 201, answer.text
        return answer.json()

    def session(self, session_id: str) -> dict:
        return self.api.get(f"/v1/sessions/{session_id}").json()

    def wait_session(self, session_id: str, done: Callable[[dict], bool], within: float = 15) -> dict:
        """Follow the session's event stream until `done(session)` holds; the session then."""
        session = self.session(session_id)
        if done(session):
            return session
        return self.wait_event(
            session_id, lambda event: event.get("session") is not None and done(event["session"]), within
        )["session"]

    def wait_event(self, session_id: str, done: Callable[[dict], bool], within: float = 15) -> dict:
        """The first event of the session (from its start) for which `done(event)` holds, within `within` seconds
        (checked at each line: the stream's keep-alive comments would otherwise hold a read open for ever)."""
        deadline = time.monotonic() + within
        with (
            httpx.Client(timeout=within) as client,
            client.stream("GET", f"{self.url}/v1/sessions/{session_id}/events", params={"token": API_TOKEN}) as stream,
        ):
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    event = json.loads(line[5:])
                    if done(event):
                        return event
                if time.monotonic() > deadline:
                    break
        raise AssertionError(f"session {session_id}: the event asked for never came; now {self.session(session_id)}")

    def wait_session_current(
        self, within: float = 10, done: Callable[[dict], bool] = lambda s: bool(s["lines"])
    ) -> dict:
        """The station's open session once `done` holds of it (by default: a scan put a line in it). A scan is
        answered 202 and handled after, so a test waits here rather than reading the session at once."""
        deadline = time.monotonic() + within
        with (
            httpx.Client(timeout=within) as client,
            client.stream("GET", f"{self.url}/v1/events", params={"token": API_TOKEN}) as stream,
        ):
            answer = self.api.get("/v1/sessions/current")
            if answer.status_code == 200 and done(answer.json()):
                return answer.json()
            for line in stream.iter_lines():
                if line.startswith("data:") and json.loads(line[5:]).get("session"):
                    answer = self.api.get("/v1/sessions/current")
                    if answer.status_code == 200 and done(answer.json()):
                        return answer.json()
                if time.monotonic() > deadline:
                    break
        raise AssertionError(f"no session as asked opened; now {self.api.get('/v1/sessions/current').text}")

    def station_event(self, done: Callable[[dict], bool], within: float = 15) -> dict:
        """The first event of the station (from the agent's start) for which `done(event)` holds."""
        with (
            httpx.Client(timeout=within) as client,
            client.stream(
                "GET", f"{self.url}/v1/events", params={"token": API_TOKEN}, headers={"Last-Event-ID": "0"}
            ) as stream,
        ):
            for line in stream.iter_lines():
                if line.startswith("data:") and done(event := json.loads(line[5:])):
                    return event
        raise AssertionError("the station event asked for never came")

    def job_printed(self, job_id: str, within: float = 15) -> str:
        """Wait until a print job (a refund, a reprint) has printed; its text."""
        try:
            self.station_event(lambda event: event.get("job_id") == job_id, within)
        except AssertionError:
            raise AssertionError(f"print job {job_id} never printed") from None
        return self.job_text(job_id)

    def printed(self, session_id: str) -> str:
        """Wait until the sale's receipt has printed; its text."""
        self.wait_event(session_id, lambda event: event["type"] == "printed")
        return self.job_text(f"{session_id}-receipt")

    def job_text(self, job_id: str) -> str:
        """The text of one print job, as the printer would print it."""
        engine = open_database(self.database)
        try:
            with engine.connect() as connection:
                data = connection.exec_driver_sql("SELECT data FROM print_job WHERE id = ?", (job_id,)).scalar_one()
        finally:
            engine.dispose()
        return "\n".join(e.text for e in decode(data) if isinstance(e, TextLine))

    def receipts(self, status: str = "printed") -> list[str]:
        """The text of every receipt printed so far, oldest first."""
        engine = open_database(self.database)
        try:
            with engine.connect() as connection:
                rows = connection.exec_driver_sql(
                    "SELECT data FROM print_job WHERE status = ? ORDER BY seq", (status,)
                ).all()
        finally:
            engine.dispose()
        return ["\n".join(e.text for e in decode(row[0]) if isinstance(e, TextLine)) for row in rows]

    def close(self) -> None:
        self.api.close()
        self.stop()
        self.central.close()
        self._wechat_served.stop()


@pytest.fixture
def stack_factory(tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    stacks: list[Stack] = []

    def make(**options: Any) -> Stack:
        where = tmp_path / f"stack{len(stacks)}"
        where.mkdir()
        stack = Stack(where, **options)
        stacks.append(stack)
        return stack.start()

    yield make
    for stack in stacks:
        stack.close()


@pytest.fixture
def stack(stack_factory) -> Stack:
    return stack_factory()
