"""The whole store for one chaos run, as separate processes on 127.0.0.1: central (`pos-central serve`, SQLite in
the run's folder), the WeChat Pay simulator (`pos-central simulate wechat`), the Alipay simulator, the agent
(`pos-edge run`, simulated scanner and printer), and the fault proxy between the agent and central.

Every process writes its log to `logs/<name>.log` in the run's folder; the agent's database, receipts and both
settings files are there too. The secrets (store token, API token, phone hash key, WeChat API key) are new for
each run, so that the checks can look for them where they must never be.
"""

from __future__ import annotations

import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from tests.chaos.proxy import ProxyThread

REPO = Path(__file__).resolve().parents[2]
STORE_ID = "CHAOS1"
STATION_ID = "T01"
WECHAT_APPID, WECHAT_MCH_ID = "wx9b1d7e3a5c2f8046", "1900000109"
ALIPAY_APP_ID = "2021000000000042"
DEMO_MEMBERS = 30  # `pos-central seed-demo`: members 1-9 pay with WeChat simulator customers 0001-0009
OWN_MEMBERS = 10  # members made here, with phone numbers and cards the driver knows
COUPONS_PER_MEMBER = 8
CUSTOMER_CONFIRMS_S = 1.0  # the simulators' USERPAYING customers confirm (or cancel) after this long
SLOW_ANSWER_S = 3.0  # scenario 50: the provider's answer held past central's timeout

# Central's payment timings, shrunk so that USERPAYING, reversal and refund scenarios finish within a short run;
# the provider timeout stays above the simulators' normal answer times on a loaded machine.
CENTRAL_TIMINGS = """
payments_poll_seconds = 0.3
payments_limit_seconds = 5.0
payments_reverse_not_before_seconds = 1.0
payments_answer_seconds = 2.0
payments_retry_max_seconds = 1.0
wechat_timeout_seconds = 2.0
alipay_timeout_seconds = 2.0
"""

AGENT_TOML = """
[store]
id = "{store}"
name = "混沌测试门店"
timezone = "Asia/Shanghai"

[station]
id = "{station}"
kind = "till"
name = "1号收银台"

[central]
url = "{central_url}"
connect_timeout_s = 1.0
read_timeout_s = 3.0
push_interval_s = 2
sync_interval_s = 5

[[devices.scanners]]
id = "scanner-1"
url = "sim://scanner-1"

[devices.printer]
id = "printer"
url = "sim://printer"

[codes]
card_patterns = ['8800[0-9]{{9}}']
coupon_pattern = 'CP[0-9A-Z]{{10}}'
guide_pattern = 'G[0-9]{{5}}'

[points]
earn_per_yuan = 1
fen_per_point = 1
max_redeem_percent = 50
excluded_categories = ["tobacco"]

[points.tiers.silver]
discount_percent = 2
earn_multiplier_percent = 120

[points.tiers.gold]
discount_percent = 5
earn_multiplier_percent = 150

[points.tiers.platinum]
discount_percent = 10
earn_multiplier_percent = 200

[offline]
redeem_cap_points_per_day = 300
probe_timeout_s = 1.0

[checkout]
providers = ["wechat", "alipay"]
code_payment_limit_s = 15

[api]
host = "127.0.0.1"
port = {api_port}

[storage]
database = "{database}"

[logging]
level = "INFO"
"""

CENTRAL_TOML = """
environment = "development"
database_url = "sqlite:///{database}"
phone_hash_key = "{phone_key}"
host = "127.0.0.1"
port = {port}
log_level = "INFO"
wechat_base_url = "http://127.0.0.1:{wechat_port}"
wechat_appid = "{appid}"
wechat_mch_id = "{mch_id}"
wechat_api_key = "{wechat_key}"
alipay_base_url = "http://127.0.0.1:{alipay_port}/gateway.do"
alipay_app_id = "{alipay_app_id}"
alipay_private_key_path = "{alipay_private_key}"
alipay_public_key_path = "{alipay_public_key}"
{timings}
"""


# Central's payments reconciliation, where this central has it: a paid payment no sale holds is declared an orphan
# charge seconds after the drain rather than an hour later, so that `pos-edge reconcile` reports it in the run.
ORPHAN_CHECK = """
payments_orphan_grace_seconds = 5.0
payments_orphan_clock_margin_seconds = 1.0
"""


def _with_orphan_check(template: str) -> str:
    from central.config import Settings

    return template + ORPHAN_CHECK if "payments_orphan_grace_seconds" in Settings.model_fields else template


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Member:
    """A member the driver can identify: by phone (confirmed), card number or member code."""

    id: str
    phone: str  # national, 11 digits
    card_no: str
    tier: str
    coupons: list[str] = field(default_factory=list)


@dataclass
class Secrets:
    api_token: str = field(default_factory=lambda: "api-" + secrets.token_urlsafe(24))
    store_token: str = ""  # issued by `pos-central store add`
    phone_key: str = field(default_factory=lambda: secrets.token_hex(16))
    wechat_key: str = field(default_factory=lambda: secrets.token_hex(16))

    def all(self) -> dict[str, str]:
        return {
            "api token": self.api_token,
            "store token": self.store_token,
            "phone hash key": self.phone_key,
            "wechat api key": self.wechat_key,
        }


class ProcessFailed(RuntimeError):
    pass


class Stack:
    def __init__(self, folder: Path, seed: int, say=print):
        self.dir = folder
        self.seed = seed
        self.say = say
        self.logs = folder / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.bin = Path(sys.executable).parent
        self.secrets = Secrets()
        self.central_port, self.wechat_port, self.alipay_port, self.api_port = (free_port() for _ in range(4))
        self.central_db = folder / "central.db"
        self.agent_db = folder / "agent.db"
        self.central_config = folder / "central.toml"
        self.agent_config = folder / "agent.toml"
        self.members: list[Member] = []
        self.payer_members: dict[str, str] = {}  # WeChat simulator customer (4 digits) -> member id
        self.proxy: ProxyThread | None = None
        self._processes: dict[str, subprocess.Popen] = {}
        self._lock = threading.RLock()  # one start, stop or kill at a time
        self._central_engine = None
        self._codes_minted: set[tuple[str, int]] = set()
        self.agent_kills = 0
        self.central_stops = 0
        self.central_kills = 0

    # --- preparation -------------------------------------------------------------------------------------------

    def prepare(self) -> None:
        from central.payments.simulators.alipay import generate_rsa_keypair

        (merchant_private, merchant_public), (alipay_private, alipay_public) = (
            generate_rsa_keypair(),
            generate_rsa_keypair(),
        )
        keys = {
            "merchant_private.pem": merchant_private,
            "merchant_public.pem": merchant_public,
            "alipay_private.pem": alipay_private,
            "alipay_public.pem": alipay_public,
        }
        for name, text in keys.items():
            self._write_private(self.dir / name, text)
        self._write_private(
            self.central_config,
            _with_orphan_check(CENTRAL_TOML).format(
                database=self.central_db,
                phone_key=self.secrets.phone_key,
                port=self.central_port,
                wechat_port=self.wechat_port,
                appid=WECHAT_APPID,
                mch_id=WECHAT_MCH_ID,
                wechat_key=self.secrets.wechat_key,
                alipay_port=self.alipay_port,
                alipay_app_id=ALIPAY_APP_ID,
                alipay_private_key=self.dir / "merchant_private.pem",
                alipay_public_key=self.dir / "alipay_public.pem",
                timings=CENTRAL_TIMINGS,
            ),
        )
        self._central("seed-demo", "--members", str(DEMO_MEMBERS), "--seed", str(self.seed))  # the schema, too
        self._add_store_and_members()
        self.proxy = ProxyThread(self.central_port, seed=self.seed).start()
        self._write_private(
            self.agent_config,
            AGENT_TOML.format(
                store=STORE_ID,
                station=STATION_ID,
                central_url=self.proxy.url,
                api_port=self.api_port,
                database=self.agent_db,
            ),
        )

    def _add_store_and_members(self) -> None:
        """The store (its token new and secret, as `pos-central store add` makes it); members with known phones,
        cards and coupons; the payer members 1-9 found by their openid. The first member code also creates
        central's signing key, so the agent's first pull brings the public key."""
        from central import card, feed, identity, stores
        from central.identity import IdentifierTaken
        from central.models import Coupon
        from central.payments.simulators.wechat import customer_openid
        from central.pii import InvalidPhoneNumber, mask_phone, normalize_cn_mobile, phone_hash

        rng = random.Random(f"chaos members {self.seed}")
        engine = self.central_engine()
        key = self.secrets.phone_key.encode()
        now = datetime.now(UTC)
        tiers = ("normal", "silver", "gold", "platinum")
        with _session(engine) as session:
            self.secrets.store_token = stores.add_store(session, STORE_ID, now, name="chaos")
            feed.lock(session)
            for customer in (f"{n:04d}" for n in range(1, 10)):
                found = identity.owner(
                    session, identity.openid_kind(WECHAT_APPID), customer_openid(WECHAT_APPID, customer)
                )
                if found:
                    self.payer_members[customer] = found
            for n in range(OWN_MEMBERS):
                while True:
                    phone = f"13{rng.choice('6789')}{rng.randrange(10**8):08d}"
                    try:
                        normalize_cn_mobile(phone)
                    except InvalidPhoneNumber:
                        continue
                    if identity.owner(session, "phone_hash", phone_hash(key, phone)) is None:
                        break
                member = identity.create_member(
                    session, now, tier=tiers[n % 4], display_name="测*员", phone_masked=mask_phone(phone)
                )
                identity.attach(session, member.id, "phone_hash", phone_hash(key, phone), now)
                while True:
                    card_no = f"8800{rng.randrange(10**9):09d}"
                    try:
                        identity.attach(session, member.id, "card_no", card_no, now)
                        break
                    except IdentifierTaken:
                        continue
                card.book(session, member.id, "opening", 2000 + 500 * n, f"chaos:{member.id}", now)
                held = Member(member.id, phone, card_no, tiers[n % 4])
                for i in range(COUPONS_PER_MEMBER):
                    percent = i % 4 == 3
                    coupon = Coupon(
                        code=card.new_coupon_code(),
                        member_id=member.id,
                        title="9折券" if percent else "满10减3",
                        kind="percent_off" if percent else "amount_off",
                        amount_off_fen=0 if percent else 300,
                        percent_off=10 if percent else 0,
                        threshold_fen=0 if percent else 1000,
                        cap_fen=1000 if percent else None,
                        usable_offline=i % 2 == 0,
                        valid_from=now - timedelta(days=1),
                        valid_until=now + timedelta(days=30),
                    )
                    held.coupons.append(card.issue_coupon(session, member.id, coupon).code)
                self.members.append(held)
            session.commit()
        self.member_code(self.members[0].id)

    def central_engine(self):
        if self._central_engine is None:
            from central.db import open_database

            self._central_engine = open_database(f"sqlite:///{self.central_db}")
        return self._central_engine

    def member_code(self, member_id: str) -> str:
        """A fresh member code (what the member's app shows), signed against central's database; never one the
        agent saw before (codes of the same second are the same code)."""
        from central import keys

        now = int(time.time())
        second = next(s for s in range(now, now - 60, -1) if (member_id, s) not in self._codes_minted)
        self._codes_minted.add((member_id, second))
        with _session(self.central_engine()) as session:
            code = keys.member_code(session, member_id, datetime.fromtimestamp(second, UTC))
            session.commit()
        return code

    # --- processes ---------------------------------------------------------------------------------------------

    def env(self, agent: bool = False) -> dict[str, str]:
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO))  # the code under test is this tree's
        if agent:
            env |= {
                "POS_EDGE_CENTRAL__TOKEN": self.secrets.store_token,
                "POS_EDGE_API__TOKEN": self.secrets.api_token,
                "POS_EDGE_PRIVACY__PHONE_HASH_KEY": self.secrets.phone_key,
            }
        return env

    def start(self) -> None:
        self._spawn(
            "wechat",
            [
                self.bin / "pos-central",
                "simulate",
                "wechat",
                "--config",
                self.central_config,
                "--port",
                self.wechat_port,
                "--userpaying-seconds",
                CUSTOMER_CONFIRMS_S,
                "--slow-seconds",
                SLOW_ANSWER_S,
            ],
        )
        self._spawn(
            "alipay",
            [
                sys.executable,
                "-m",
                "tests.chaos.alipay_sim",
                "--port",
                self.alipay_port,
                "--app-id",
                ALIPAY_APP_ID,
                "--merchant-public-key",
                self.dir / "merchant_public.pem",
                "--alipay-private-key",
                self.dir / "alipay_private.pem",
                "--userpaying-seconds",
                CUSTOMER_CONFIRMS_S,
                "--slow-seconds",
                SLOW_ANSWER_S,
            ],
        )
        self._wait_http("wechat", f"http://127.0.0.1:{self.wechat_port}/_sim/records")
        self._wait_http("alipay", f"http://127.0.0.1:{self.alipay_port}/_sim/records")
        self.start_central()
        self.start_agent()

    def start_central(self) -> None:
        with self._lock:
            if self.running("central"):
                return
            self._spawn("central", [self.bin / "pos-central", "serve", "--config", self.central_config])
            self._wait_http("central", f"http://127.0.0.1:{self.central_port}/healthz")
            self.proxy.refuse(False)

    def stop_central(self, kill: bool = False) -> None:
        """SIGTERM (requests in flight finish), or SIGKILL; the proxy then refuses connections, as central's own
        port would."""
        with self._lock:
            self._stop("central", kill)
            self.proxy.refuse(True)
            self.central_stops += 1
            self.central_kills += kill

    def start_agent(self) -> None:
        with self._lock:
            if self.running("agent"):
                return
            self._spawn("agent", [self.bin / "pos-edge", "run", "--config", self.agent_config], agent=True)
            self._wait_http("agent", f"http://127.0.0.1:{self.api_port}/healthz")

    def kill_agent(self) -> bool:
        """kill -9 the agent (no shutdown code runs); False when it was not running."""
        with self._lock:
            if not self.running("agent"):
                return False
            self._stop("agent", kill=True)
            self.agent_kills += 1
            return True

    def running(self, name: str) -> bool:
        process = self._processes.get(name)
        return process is not None and process.poll() is None

    def close(self) -> None:
        with self._lock:
            for name in ("agent", "central", "wechat", "alipay"):
                self._stop(name, kill=False)
            if self.proxy is not None:
                self.proxy.stop()
            if self._central_engine is not None:
                self._central_engine.dispose()

    def sim_records(self, provider: str) -> dict:
        port = self.wechat_port if provider == "wechat" else self.alipay_port
        answer = httpx.get(f"http://127.0.0.1:{port}/_sim/records", timeout=30)
        answer.raise_for_status()
        return answer.json()

    def cli(self, program: str, *args: str, check: bool = False) -> subprocess.CompletedProcess:
        """Run `pos-edge` (with the agent's settings and secrets) or `pos-central`; output captured."""
        command = [str(self.bin / program), *map(str, args)]
        done = subprocess.run(
            command,
            env=self.env(agent=program == "pos-edge"),
            capture_output=True,
            text=True,
            timeout=120,
            cwd=self.dir,
        )
        if check and done.returncode != 0:
            raise ProcessFailed(f"{' '.join(command)} exited {done.returncode}: {done.stderr[-2000:]}")
        return done

    def _central(self, *args: str) -> str:
        return self.cli("pos-central", *args, "--config", str(self.central_config), check=True).stdout

    def _spawn(self, name: str, command: list, agent: bool = False) -> None:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - the process owns it until it ends
        try:
            self._processes[name] = subprocess.Popen(
                [str(part) for part in command],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env(agent),
                cwd=self.dir,
                start_new_session=True,  # a Ctrl-C reaches the run, which stops these in order
            )
        finally:
            log.close()

    def _stop(self, name: str, kill: bool) -> None:
        process = self._processes.get(name)
        if process is None or process.poll() is not None:
            return
        if kill:
            process.kill()
        else:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(20)
                return
            except subprocess.TimeoutExpired:
                self.say(f"{name} did not stop within 20 s of SIGTERM: killed")
                process.kill()
        process.wait(10)

    def _wait_http(self, name: str, url: str, within: float = 60.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            process = self._processes.get(name)
            if process is not None and process.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]
                raise ProcessFailed(f"{name} exited with {process.returncode} while starting:\n{tail}")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise ProcessFailed(f"{name} did not answer {url} within {within:g} s")

    @staticmethod
    def _write_private(path: Path, text: str) -> None:
        path.touch(mode=0o600)
        path.write_text(text, encoding="utf-8")


def _session(engine):
    from central.db import write_session

    return write_session(engine)
