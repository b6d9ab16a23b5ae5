"""The driver: a cashier who sells through the agent's local API (docs/checkout.md) as fast as the till lets
them, every kind of sale, and writes down what the till TOLD them.

A sale counts as told paid only when an answer of the till says the session is paid (or closed) and gives its
transaction id. An answer that never came (the agent was killed, a request timed out) leaves the sale unknown
until the driver can look again: a sale the restarted agent restores is finished as a cashier would (waiting
for a payment in progress, then paying the rest in cash or cancelling); one that is gone is looked up in the
transactions list (`journaled_untold`) or counted `lost`.

A cashier whose code payment failed (back to the basket) takes another code or cash, as cashiers do — which is
how a payment wrongly reported "not charged" turns into a customer charged twice.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from tests.chaos.disruptions import Disruptions
from tests.chaos.stack import Stack

PAID_STATES = frozenset({"paid", "closed"})
OPEN_STATES = frozenset({"idle", "member", "basket", "tender"})
PAYMENT_OPEN = frozenset({"sending", "PENDING", "USERPAYING", "UNKNOWN", "REVERSING"})

# Sales of each kind, by weight.
KINDS = {
    "pay_as_member": 14,  # a WeChat payment code of a member: identified and charged by one scan
    "userpaying": 5,  # the customer confirms on the phone (or cancels, or never does): slow, so fewer
    "alipay": 8,
    "cash": 10,  # anonymous or by card; offline while central is down
    "coupon": 8,
    "redeem": 8,  # points spent, the member identified by member code
    "phone": 5,  # identified by a confirmed phone number, then a code payment
    "split": 8,  # card or cash for part, a code for the rest
    "cancel": 6,  # cancelled before paying, or while a code payment waits for the customer
    "refund_whole": 8,
    "refund_lines": 8,
}
# WeChat simulator scenarios (last two digits of the auth code) for a code payment that should go through.
PAYING = ("00",) * 12 + ("20", "21", "50", "60", "61", "10")
WAITING = ("10", "10", "10", "11", "12")
ALIPAY = ("00",) * 8 + ("10", "11", "20", "21", "50", "60")
NAMES = ("矿泉水 550ml", "鲜牛奶 1L", "有机大米 5kg", "苹果 1kg", "酸奶 4杯", "面包", "洗衣液 2L", "纸巾 10包", "香烟")


class AgentLost(Exception):
    """The agent did not answer (killed or restarting): what the step did is unknown."""


@dataclass
class Answer:
    status: int
    body: Any

    @property
    def error(self) -> str | None:
        """The error code and message of a 4xx/5xx answer, as `code: message`."""
        if self.status < 400:
            return None
        if isinstance(self.body, dict):
            return f"{self.body.get('error')}: {str(self.body.get('message', ''))[:160]}"
        return str(self.body)[:160]

    @property
    def code(self) -> str | None:
        return self.body.get("error") if self.status >= 400 and isinstance(self.body, dict) else None


@dataclass
class SaleRecord:
    n: int
    kind: str
    session_id: str | None = None
    member_id: str | None = None
    auth_codes: list[str] = field(default_factory=list)  # every payment code shown for this sale
    out_trade_nos: set[str] = field(default_factory=set)  # every code payment the till reported for it
    outcome: str = "open"  # told_paid | cancelled | journaled_untold | lost | abandoned
    transaction_id: str | None = None
    amount_due_fen: int | None = None
    offline: bool = False  # paid while the till was offline
    coupon: str | None = None
    payer: str | None = None  # pay-as-member: the simulated customer, whose member should be on the sale
    answers_lost: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


@dataclass
class RefundRecord:
    n: int
    kind: str
    sale: SaleRecord
    lines: list[dict] | None
    outcome: str = "open"  # told_refunded | refused | offline | answer_lost | unknown
    refund_id: str | None = None
    total_fen: int | None = None
    attempts: int = 0
    answers_lost: int = 0  # 502 "the answer did not arrive", or the agent gone
    notes: list[str] = field(default_factory=list)


class Driver:
    def __init__(self, stack: Stack, disruptions: Disruptions, seed: int, say=print):
        self.stack = stack
        self.disruptions = disruptions
        self.say = say
        self.rng = random.Random(f"chaos driver {seed}")
        self.seed = seed
        self.api = httpx.Client(
            base_url=f"http://127.0.0.1:{stack.api_port}",
            headers={"Authorization": f"Bearer {stack.secrets.api_token}"},
            timeout=httpx.Timeout(30.0, connect=2.0),
        )
        self.sales: list[SaleRecord] = []
        self.refunds: list[RefundRecord] = []
        self.server_errors: list[str] = []  # 5xx answers the API does not document
        self.offline_refusals = 0  # code payments refused as offline
        self.offline_refusals_central_up = 0  # ... while central was running
        self.bad_inputs = 0  # requests with bad values sent (NaN, Infinity, 1e999, a seq past 2^63)
        self._by_session: dict[str, SaleRecord] = {}
        self._used_coupons: set[str] = set()
        self._codes = 0
        self._retry_refunds: list[RefundRecord] = []

    # --- the run -----------------------------------------------------------------------------------------------

    def run(self, until: float) -> None:
        kinds, weights = list(KINDS), list(KINDS.values())
        while time.monotonic() < until:
            kind = self.rng.choices(kinds, weights)[0]
            if kind.startswith("refund"):
                self._refund(kind)
            else:
                self._sale(kind)
            time.sleep(self.rng.uniform(0.0, 0.05))

    def sync_once(self, within: float = 60.0) -> None:
        deadline = time.monotonic() + within
        while self._call("POST", "/v1/sync").status != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("the agent could not sync with central")
            time.sleep(0.5)

    def finish(self) -> None:
        """At the end: the open sale, if any, finished or cancelled. (Refunds whose answer was lost are not asked
        again here: finishing them is the till's job.)"""
        self._clear_open()

    def close(self) -> None:
        self.api.close()

    def records(self) -> dict:
        """What the driver did and was told, for the run's folder (auth codes left out: they are secrets)."""
        sales = [
            {k: v for k, v in asdict(sale).items() if k != "auth_codes"} | {"out_trade_nos": sorted(sale.out_trade_nos)}
            for sale in self.sales
        ]
        refunds = [
            {k: v for k, v in asdict(refund).items() if k != "sale"} | {"sale": refund.sale.n}
            for refund in self.refunds
        ]
        return {"sales": sales, "refunds": refunds, "server_errors": self.server_errors}

    @property
    def auth_codes(self) -> set[str]:
        return {code for sale in self.sales for code in sale.auth_codes}

    # --- the API -----------------------------------------------------------------------------------------------

    def _call(self, method: str, path: str, body: Any = None, raw: bytes | None = None) -> Answer:
        try:
            if raw is not None:
                response = self.api.request(method, path, content=raw, headers={"Content-Type": "application/json"})
            else:
                response = self.api.request(method, path, json=body)
        except httpx.TransportError as exc:
            raise AgentLost(f"{method} {path}: {type(exc).__name__}") from exc
        try:
            content = response.json()
        except ValueError:
            content = response.text
        if response.status_code >= 500 and response.status_code not in (502, 503):
            self.server_errors.append(f"{method} {path}: {response.status_code} {str(content)[:200]}")
        return Answer(response.status_code, content)

    def _wait_agent(self, within: float = 120.0) -> None:
        """Until the agent answers again (the disruptions restart it; if nobody does, start it)."""
        deadline = time.monotonic() + within
        down_since = None
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{self.stack.api_port}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if not self.stack.running("agent"):
                down_since = down_since or time.monotonic()
                if time.monotonic() - down_since > 5:
                    self.stack.start_agent()
            time.sleep(0.1)
        raise RuntimeError(f"the agent did not come back within {within:g} s")

    # --- sales -------------------------------------------------------------------------------------------------

    def _sale(self, kind: str) -> None:
        sale = SaleRecord(len(self.sales) + 1, kind)
        self.sales.append(sale)
        started = time.monotonic()
        try:
            self._clear_open()
            self._run_sale(sale)
        except AgentLost as exc:
            sale.answers_lost += 1
            sale.notes.append(f"agent lost: {exc}")
            self._resume(sale)
        finally:
            sale.seconds = round(time.monotonic() - started, 2)

    def _run_sale(self, sale: SaleRecord) -> None:
        opened = self._call("POST", "/v1/sessions", {})
        if opened.status != 201:
            sale.outcome = "abandoned"
            sale.notes.append(f"could not open: {opened.status} {opened.error}")
            return
        session = opened.body
        sale.session_id = session["id"]
        self._by_session[sale.session_id] = sale
        if self.rng.random() < 0.05:
            self._bad_input(sale)
        kind = sale.kind
        member = None
        if kind in ("coupon", "redeem", "phone") or (kind == "cash" and self.rng.random() < 0.4):
            member = self.rng.choice(self.stack.members)
            how = {"redeem": "member_code", "phone": "phone"}.get(kind) or self.rng.choice(
                ("card", "phone", "member_code")
            )
            session = self._identify(sale, member, how) or session
        session = self._basket(sale, big=kind == "coupon")
        if session is None:
            return self._give_up(sale)
        if kind == "coupon" and member is not None:
            session = self._coupon(sale, member) or session
        if kind == "redeem":
            session = self._redeem(sale, session) or session
        if kind == "cancel":
            return self._cancel(sale)
        if kind == "cash":
            session = self._pay_cash(sale)
        elif kind == "split":
            session = self._pay_split(sale, session)
        elif kind == "userpaying":
            session = self._pay_code(sale, self._wechat_code(self.rng.choice(WAITING)))
        elif kind == "alipay":
            session = self._pay_code(sale, self._alipay_code(self.rng.choice(ALIPAY)))
        elif kind == "pay_as_member":
            code = self._wechat_code(self.rng.choice(PAYING), payer=True)
            sale.payer = code[2:6]
            session = self._pay_code(sale, code)
        else:  # coupon, redeem, phone: a code (any customer's) or cash
            if self.rng.random() < 0.7:
                code = (
                    self._wechat_code(self.rng.choice(PAYING)) if self.rng.random() < 0.6 else self._alipay_code("00")
                )
                session = self._pay_code(sale, code)
            else:
                session = self._pay_cash(sale)
        self._after_payment(sale, session)

    def _bad_input(self, sale: SaleRecord) -> None:
        """What a buggy POS might send: valid JSON the API must refuse with a 4xx (a 5xx is a violation)."""
        method, path, raw = self.rng.choice(
            (
                (
                    "PUT",
                    f"/v1/sessions/{sale.session_id}/basket",
                    b'{"lines": [{"sku": "1", "name": "x", "qty": 1, "unit_price_fen": NaN}]}',
                ),
                ("POST", f"/v1/sessions/{sale.session_id}/tenders", b'{"kind": "cash", "tendered_fen": 1e999}'),
                ("PUT", f"/v1/sessions/{sale.session_id}/redemption", b'{"points": Infinity}'),
                ("POST", "/v1/refunds", b'{"transaction": "x", "lines": [{"line": -Infinity, "qty": 1}]}'),
                ("GET", "/v1/transactions?before=9223372036854775808", None),
            )
        )
        self.bad_inputs += 1
        answer = self._call(method, path, raw=raw) if raw is not None else self._call(method, path)
        if not 400 <= answer.status < 500 and not (method == "GET" and answer.status == 200):
            sale.notes.append(f"bad input {method} {path.split('?')[0]}: {answer.status}")

    def _identify(self, sale: SaleRecord, member, how: str) -> dict | None:
        if how == "phone":
            answer = self._call(
                "POST", f"/v1/sessions/{sale.session_id}/phone", {"phone": member.phone, "confirmed": True}
            )
        else:
            text = member.card_no if how == "card" else self.stack.member_code(member.id)
            answer = self._call("POST", f"/v1/sessions/{sale.session_id}/codes", {"text": text})
        if answer.status == 200:
            sale.member_id = member.id
            return answer.body
        sale.notes.append(f"member by {how} refused: {answer.status} {answer.error}")
        return None

    def _basket(self, sale: SaleRecord, big: bool = False) -> dict | None:
        lines = []
        for i in range(self.rng.randint(1, 4)):
            name = self.rng.choice(NAMES)
            lines.append(
                {
                    "sku": f"69{self.rng.randrange(10**11):011d}",
                    "name": name,
                    "qty": self.rng.randint(1, 3),
                    "unit_price_fen": self.rng.randrange(150, 4990) + (1500 if big and i == 0 else 0),
                    "category": "tobacco" if name == "香烟" else "",
                }
            )
        answer = self._call("PUT", f"/v1/sessions/{sale.session_id}/basket", {"lines": lines})
        if answer.status != 200:
            sale.notes.append(f"basket refused: {answer.status} {answer.error}")
            return None
        return answer.body

    def _coupon(self, sale: SaleRecord, member) -> dict | None:
        unused = [c for c in member.coupons if c not in self._used_coupons]
        if not unused:
            return None
        code = self.rng.choice(unused)
        answer = self._call("POST", f"/v1/sessions/{sale.session_id}/codes", {"text": code})
        if answer.status == 200:
            sale.coupon = code
            self._used_coupons.add(code)  # spent once this sale is paid; never offered again either way
            return answer.body
        if answer.code == "coupon_not_usable" and "used" in str(answer.body.get("message", "")):
            self._used_coupons.add(code)
        sale.notes.append(f"coupon refused: {answer.status} {answer.error}")
        return None

    def _redeem(self, sale: SaleRecord, session: dict) -> dict | None:
        most = (session.get("pricing") or {}).get("max_redeemable_points", 0)
        if most <= 0:
            return None
        answer = self._call("PUT", f"/v1/sessions/{sale.session_id}/redemption", {"points": self.rng.randint(1, most)})
        if answer.status == 200:
            return answer.body
        sale.notes.append(f"redemption refused: {answer.status} {answer.error}")
        return None

    def _cancel(self, sale: SaleRecord) -> None:
        """Cancelled before paying; while a code payment waits for the customer (who may yet confirm); or after a
        card paid part of it (a void is journaled)."""
        way = self.rng.random()
        if way < 0.5:
            session = self._tender_code(
                sale, self._wechat_code(self.rng.choice(("12", "12", "10", "40", "41"))), settle=False
            )
            if session is not None and session["state"] in PAID_STATES:
                return self._told(sale, session)
            if self.rng.random() < 0.3:
                self.disruptions.money_step()
                self._call("POST", f"/v1/sessions/{sale.session_id}/payment/cancel")
        elif way < 0.7:
            session = self._session(sale)
            if session is not None and session["remaining_fen"] > 1:
                part = {
                    "kind": "card",
                    "amount_fen": session["remaining_fen"] // 2,
                    "reference": f"TRACE{self.rng.randrange(10**6):06d}",
                }
                self._call("POST", f"/v1/sessions/{sale.session_id}/tenders", part)
        self.disruptions.money_step()
        answer = self._call("POST", f"/v1/sessions/{sale.session_id}/cancel")
        if answer.status == 200 and answer.body["state"] == "cancelled":
            sale.outcome = "cancelled"
            return
        sale.notes.append(f"cancel refused: {answer.status} {answer.error}")
        self._finish(sale, self._session(sale))

    # --- paying ------------------------------------------------------------------------------------------------

    def _wechat_code(self, scenario: str, payer: bool = False) -> str:
        self._codes += 1
        customer = f"{self.rng.randint(1, 9):04d}" if payer else f"{self.rng.randint(10, 99):04d}"
        return f"13{customer}{self.seed % 100:02d}{self._codes:08d}{scenario}"

    def _alipay_code(self, scenario: str) -> str:
        self._codes += 1
        return f"28{self.rng.randint(1, 99):04d}{self.seed % 100:02d}{self._codes:08d}{scenario}"

    def _tender_code(self, sale: SaleRecord, code: str, settle: bool = True) -> dict | None:
        """Show a payment code; the session once the payment has settled (None: refused as offline)."""
        sale.auth_codes.append(code)
        self.disruptions.money_step()
        answer = self._call("POST", f"/v1/sessions/{sale.session_id}/tenders", {"kind": "code", "auth_code": code})
        if answer.status == 200:
            self._note_payment(sale, answer.body)
            return self._settle(sale, answer.body) if settle else answer.body
        if answer.code == "offline":
            self.offline_refusals += 1
            self.offline_refusals_central_up += self.stack.running("central")
            return None
        sale.notes.append(f"code payment: {answer.status} {answer.error}")
        return self._settle(sale, self._session(sale))

    def _pay_code(self, sale: SaleRecord, code: str) -> dict | None:
        """A code payment; when it fails, the cashier tries another code or takes cash (at most twice)."""
        session = self._tender_code(sale, code)
        for _ in range(2):
            if session is not None and session["state"] not in OPEN_STATES:
                return session
            if session is None or self.rng.random() < 0.5:
                return self._pay_cash(sale)
            session = self._tender_code(
                sale, self._wechat_code("00") if code.startswith("1") else self._alipay_code("00")
            )
        return session if session is not None and session["state"] not in OPEN_STATES else self._pay_cash(sale)

    def _pay_cash(self, sale: SaleRecord) -> dict | None:
        session = self._session(sale)
        if session is None or session["state"] not in OPEN_STATES or session["remaining_fen"] <= 0:
            return session
        left = session["remaining_fen"]
        self.disruptions.money_step()
        answer = self._call(
            "POST",
            f"/v1/sessions/{sale.session_id}/tenders",
            {"kind": "cash", "tendered_fen": (left + 999) // 1000 * 1000 + self.rng.choice((0, 0, 5000))},
        )
        if answer.status == 200:
            return answer.body
        sale.notes.append(f"cash: {answer.status} {answer.error}")
        return self._session(sale)

    def _pay_split(self, sale: SaleRecord, session: dict) -> dict | None:
        due = session["remaining_fen"]
        part = max(1, due // self.rng.choice((2, 3, 4)))
        if self.rng.random() < 0.5:
            first = {"kind": "card", "amount_fen": part, "reference": f"TRACE{self.rng.randrange(10**6):06d}"}
        else:
            first = {"kind": "cash", "amount_fen": part, "tendered_fen": part}
        self.disruptions.money_step()
        answer = self._call("POST", f"/v1/sessions/{sale.session_id}/tenders", first)
        if answer.status != 200:
            sale.notes.append(f"split first tender: {answer.status} {answer.error}")
        if self.rng.random() < 0.2:
            return self._pay_cash(sale)
        code = (
            self._wechat_code(self.rng.choice(PAYING))
            if self.rng.random() < 0.6
            else self._alipay_code(self.rng.choice(ALIPAY))
        )
        return self._pay_code(sale, code)

    def _settle(self, sale: SaleRecord, session: dict | None, within: float = 45.0) -> dict | None:
        """Follow the session while a code payment is in progress."""
        deadline = time.monotonic() + within
        while session is not None and session["state"] in OPEN_STATES and _payment_open(session):
            if time.monotonic() > deadline:
                sale.notes.append("a code payment stayed open past the driver's patience")
                break
            time.sleep(0.2)
            session = self._session(sale)
            self._note_payment(sale, session)
        return session

    def _session(self, sale: SaleRecord) -> dict | None:
        answer = self._call("GET", f"/v1/sessions/{sale.session_id}")
        return answer.body if answer.status == 200 else None

    @staticmethod
    def _note_payment(sale: SaleRecord, session: dict | None) -> None:
        if session and session.get("payment"):
            sale.out_trade_nos.add(session["payment"]["out_trade_no"])

    def _after_payment(self, sale: SaleRecord, session: dict | None) -> None:
        if session is not None and session["state"] in PAID_STATES and session.get("transaction_id"):
            return self._told(sale, session)
        self._finish(sale, session if session is not None else self._session(sale))

    def _told(self, sale: SaleRecord, session: dict) -> None:
        sale.outcome = "told_paid"
        sale.transaction_id = session["transaction_id"]
        sale.amount_due_fen = session["pricing"]["amount_due_fen"]
        sale.offline = not session.get("online", True)

    def _give_up(self, sale: SaleRecord) -> None:
        answer = self._call("POST", f"/v1/sessions/{sale.session_id}/cancel")
        sale.outcome = "cancelled" if answer.status == 200 and answer.body["state"] == "cancelled" else "abandoned"

    # --- after a lost answer -----------------------------------------------------------------------------------

    def _resume(self, sale: SaleRecord) -> None:
        """The agent answered nothing: once it is back, find out what became of the sale and finish it."""
        for _ in range(5):
            try:
                self._wait_agent()
                current = self._call("GET", "/v1/sessions/current")
                if current.status == 200:
                    found = self._by_session.get(current.body["id"])
                    self._finish(found or self._stray(current.body), current.body)
                if sale.session_id is None or sale.outcome != "open":
                    if sale.outcome == "open":
                        sale.outcome = "lost"
                    return
                session = self._session(sale)
                if session is not None:
                    return self._finish(sale, session)
                journaled = self._call("GET", f"/v1/transactions/{sale.session_id}")
                if journaled.status == 200 and journaled.body["kind"] == "sale":
                    sale.outcome, sale.transaction_id = "journaled_untold", journaled.body["id"]
                else:
                    sale.outcome = "lost"
                return
            except AgentLost as exc:
                sale.answers_lost += 1
                sale.notes.append(f"agent lost again: {exc}")
        sale.outcome = "lost"

    def _stray(self, session: dict) -> SaleRecord:
        """An open sale the driver has no record of (it was opened just before an answer was lost)."""
        sale = SaleRecord(len(self.sales) + 1, "restored", session_id=session["id"])
        self.sales.append(sale)
        self._by_session[session["id"]] = sale
        return sale

    def _finish(self, sale: SaleRecord, session: dict | None) -> None:
        """Bring an open sale to an end as a cashier would: wait for a payment in progress; then pay the rest in
        cash, or cancel."""
        session = self._settle(sale, session)
        if session is None:
            if sale.outcome == "open":
                sale.outcome = "lost"
            return
        if session["state"] in PAID_STATES and session.get("transaction_id"):
            return self._told(sale, session)
        if session["state"] == "cancelled":
            sale.outcome = "cancelled"
            return
        if _payment_open(session):  # still waiting for the customer: give the payment up
            self.disruptions.money_step()
            self._call("POST", f"/v1/sessions/{sale.session_id}/payment/cancel")
            session = self._settle(sale, self._session(sale), within=30)
        if (
            session is not None
            and session["state"] in OPEN_STATES
            and session.get("pricing")
            and self.rng.random() < 0.6
        ):
            session = self._pay_cash(sale)
            if session is not None and session["state"] in PAID_STATES and session.get("transaction_id"):
                return self._told(sale, session)
        answer = self._call("POST", f"/v1/sessions/{sale.session_id}/cancel")
        if answer.status == 200 and answer.body["state"] == "cancelled":
            sale.outcome = "cancelled"
            return
        session = self._session(sale)  # paid meanwhile (a payment settled at the last moment)?
        if session is not None and session["state"] in PAID_STATES and session.get("transaction_id"):
            return self._told(sale, session)
        sale.outcome = "abandoned"
        sale.notes.append(f"could not end the sale: {answer.status} {answer.error}")

    def _clear_open(self) -> None:
        """Before a new sale: the sale left open (restored after a restart, or stuck) is finished first."""
        for _ in range(5):
            try:
                self._wait_agent()
                current = self._call("GET", "/v1/sessions/current")
                if current.status != 200:
                    return
                self._finish(self._by_session.get(current.body["id"]) or self._stray(current.body), current.body)
            except AgentLost:
                continue

    # --- refunds -----------------------------------------------------------------------------------------------

    def _refund(self, kind: str) -> None:
        if self._retry_refunds and self.rng.random() < 0.5:  # the cashier asks again for a refund that failed
            return self._ask_refund(self._retry_refunds[0])
        paid = [s for s in self.sales if s.outcome == "told_paid" and "refunded in full" not in s.notes]
        by_code = [s for s in paid if s.out_trade_nos]  # most refunds go back through a provider
        if not paid:
            return
        sale = self.rng.choice(by_code if by_code and self.rng.random() < 0.7 else paid)
        lines = None
        if kind == "refund_lines":
            try:
                self._wait_agent()
                found = self._call("GET", f"/v1/transactions/{sale.transaction_id}")
            except AgentLost:
                return
            if found.status != 200:
                return
            refunded = [0] * len(found.body["body"]["lines"])
            for earlier in found.body["refunds"]:
                for line in earlier["body"]["lines"]:
                    refunded[line["line"]] += line["qty"]
            left = [
                (i, line["qty"] - refunded[i])
                for i, line in enumerate(found.body["body"]["lines"])
                if line["qty"] > refunded[i]
            ]
            if not left:
                sale.notes.append("refunded in full")
                return
            line, most = self.rng.choice(left)
            lines = [{"line": line, "qty": self.rng.randint(1, most)}]
        refund = RefundRecord(len(self.refunds) + 1, kind, sale, lines)
        self.refunds.append(refund)
        self._ask_refund(refund)

    def _ask_refund(self, refund: RefundRecord) -> None:
        refund.attempts += 1
        if refund in self._retry_refunds:
            self._retry_refunds.remove(refund)
        try:
            self._wait_agent()
            self.disruptions.money_step()
            answer = self._call(
                "POST",
                "/v1/refunds",
                {"transaction": refund.sale.transaction_id, "lines": refund.lines, "reason": "chaos"},
            )
        except AgentLost as exc:
            refund.outcome = "unknown"
            refund.answers_lost += 1
            refund.notes.append(f"agent lost: {exc}")
            self._maybe_again(refund)
            return
        if answer.status == 201:
            refund.outcome, refund.refund_id, refund.total_fen = (
                "told_refunded",
                answer.body["id"],
                answer.body["total_fen"],
            )
        elif answer.code == "refund_refused":
            refund.outcome = "refused"
            refund.sale.notes.append("refunded in full")
        elif answer.code == "offline":
            refund.outcome = "offline"
        else:
            refund.outcome = "answer_lost" if answer.status == 502 else "refused"
            refund.notes.append(f"{answer.status} {answer.error}")
            if answer.status == 502:
                refund.answers_lost += 1
                self._maybe_again(refund)

    def _maybe_again(self, refund: RefundRecord) -> None:
        """Some cashiers ask again for a refund whose answer was lost, as the till says to; others do not."""
        if refund.attempts < 3 and self.rng.random() < 0.4:
            self._retry_refunds.append(refund)


def _payment_open(session: dict) -> bool:
    payment = session.get("payment")
    return payment is not None and payment["state"] in PAYMENT_OPEN
