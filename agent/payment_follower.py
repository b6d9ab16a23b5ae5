"""Following a code payment whose outcome is open, in the background, until central says how it ended.

One task per unsettled payment. Each turn it asks the table (agent/code_payment.py) what to do next — void a
payment the till gave up, give up one past the till's limit, or long-poll central — does it, and hands central's
answer to the sale's rules under the station's lock, through the checkout that owns the sale.

Central not knowing the payment is no answer: its request may still be on its way. While the till holds the
request it sends it again (the same out_trade_no is one payment at central, ever); without it (after a restart),
or once the till gave up, it voids the number, which central records even unseen — so a late copy of the charge is
refused, and "not charged" is a fact, not a guess.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Protocol

from agent import sale_rules as rules
from agent.central_client import CentralClient, CentralError, CentralRejected
from agent.clock import Clock
from agent.code_payment import FollowerMove, follower_move, news
from agent.connectivity import Connectivity
from agent.sale import CodePayment, Sale
from central.contract import Payment, PaymentRequest, PaymentVoid
from drivers.backoff import Backoff


class SaleKeeper(Protocol):
    """The checkout as its follower uses it: the station's lock, its sales, and keeping a decided step."""

    station_id: str
    lock: asyncio.Lock

    def find(self, sale_id: str) -> Sale | None: ...

    async def carry_out(self, step: rules.Step) -> Sale: ...


log = logging.getLogger(__name__)

# How long one long-poll for a code payment's state may wait at central.
PAYMENT_WAIT_S = 5.0
# Between attempts to reach central about a payment whose outcome is unknown: steady, a customer may be waiting
# (a cap above `first` would make it back off).
RESOLVE_RETRY = Backoff(first=3.0, cap=3.0, jitter=0)
TIMED_OUT = "the customer did not confirm in time"


class PaymentFollower:
    def __init__(
        self, keeper: SaleKeeper, client: CentralClient, connectivity: Connectivity, clock: Clock, limit_s: float
    ):
        self.keeper = keeper
        self.client = client
        self.connectivity = connectivity
        self.clock = clock
        self.limit = timedelta(seconds=limit_s)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        # Code payments' requests, held in memory (never on disk: they carry the auth code) while their outcome is
        # open, so one central has not seen can be sent again under its own number.
        self._requests: dict[str, PaymentRequest] = {}

    def hold(self, request: PaymentRequest) -> None:
        self._requests[request.out_trade_no] = request

    def follow_unsettled(self, sale: Sale) -> None:
        """Every unsettled payment of the sale has a follower (a charge still being sent is its sender's)."""
        for payment in sale.unsettled_payments:
            if payment.state == "sending":
                continue
            if payment.out_trade_no not in self._tasks:
                self._start(sale.id, payment.out_trade_no)
        for payment in sale.payments:
            if payment.settled:
                self._requests.pop(payment.out_trade_no, None)

    def _start(self, sale_id: str, out_trade_no: str) -> None:
        task = asyncio.get_running_loop().create_task(self._follow(sale_id, out_trade_no))
        self._tasks[out_trade_no] = task
        task.add_done_callback(lambda _: self._tasks.pop(out_trade_no, None))

    async def void(self, sale: Sale, out_trade_no: str) -> rules.Step:
        """Ask central to void a payment the till gave up; its answer (or its absence) as the rules' step."""
        self._requests.pop(out_trade_no, None)
        try:
            answer = await self.client.void_payment(out_trade_no, self._void_of(_payment_in(sale, out_trade_no)))
        except CentralError as exc:
            return rules.void_unanswered(sale, out_trade_no, str(exc))
        return rules.void_answered(sale, out_trade_no, answer)

    async def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def _follow(self, sale_id: str, out_trade_no: str) -> None:
        try:
            while (move := self._next(sale_id, out_trade_no)) is not FollowerMove.DONE:
                try:
                    await self._turn(sale_id, out_trade_no, move)
                except CentralError as exc:
                    log.warning(
                        "payment outcome not known yet", extra={"out_trade_no": out_trade_no, "error": str(exc)}
                    )
                    await self.clock.sleep(RESOLVE_RETRY.delay(failures=1))
                except Exception:  # a bug must not stop a payment being followed: it is money
                    log.exception("following a payment failed; trying again", extra={"out_trade_no": out_trade_no})
                    await self.clock.sleep(RESOLVE_RETRY.delay(failures=1))
        finally:
            self._requests.pop(out_trade_no, None)

    def _next(self, sale_id: str, out_trade_no: str) -> FollowerMove:
        found = self._payment(sale_id, out_trade_no)
        if found is None:
            return FollowerMove.DONE
        _, payment = found
        return follower_move(
            payment.state,
            payment.cancel_requested,
            payment.void_answered,
            payment.created_at,
            self.clock.now(),
            self.limit,
        )

    async def _turn(self, sale_id: str, out_trade_no: str, move: FollowerMove) -> None:
        if move is FollowerMove.VOID:
            found = self._payment(sale_id, out_trade_no)
            assert found is not None
            voided = await self.client.void_payment(out_trade_no, self._void_of(found[1]))
            await self._apply(sale_id, out_trade_no, move, lambda sale: rules.void_answered(sale, out_trade_no, voided))
        elif move is FollowerMove.GIVE_UP:
            await self._apply(sale_id, out_trade_no, move, lambda sale: rules.given_up(sale, out_trade_no, TIMED_OUT))
            if self._next(sale_id, out_trade_no) is FollowerMove.VOID:  # its void went unanswered: wait, then again
                await self.clock.sleep(RESOLVE_RETRY.delay(failures=1))
        else:
            answer = await self.client.payment(out_trade_no, wait_s=PAYMENT_WAIT_S) or await self._send_again(
                sale_id, out_trade_no
            )
            if answer is not None:
                await self._apply_answer(sale_id, out_trade_no, answer)

    async def _apply(
        self, sale_id: str, out_trade_no: str, move: FollowerMove, decide: Callable[[Sale], rules.Step]
    ) -> None:
        """Decide under the station's lock, if the payment still calls for `move` (the cashier may have acted)."""
        async with self.keeper.lock:
            if self._next(sale_id, out_trade_no) is not move:
                return
            found = self._payment(sale_id, out_trade_no)
            assert found is not None, "a payment the table still moves is in a sale the checkout holds"
            if move is FollowerMove.VOID:
                self.connectivity.saw(True)
            await self.keeper.carry_out(decide(found[0]))

    async def _apply_answer(self, sale_id: str, out_trade_no: str, answer: Payment) -> None:
        async with self.keeper.lock:
            found = self._payment(sale_id, out_trade_no)
            if found is None or not news(found[1].state, answer):
                return
            self.connectivity.saw(True)
            await self.keeper.carry_out(rules.answered(found[0], out_trade_no, answer))

    async def _send_again(self, sale_id: str, out_trade_no: str) -> Payment | None:
        """Central has not seen this payment: send the held request again, or, without one, give the number up
        (voided on the next turn). None when there is no answer to apply yet."""
        request = self._requests.get(out_trade_no)
        found = self._payment(sale_id, out_trade_no)
        if request is not None and found is not None and not found[1].cancel_requested:
            try:
                return await self.client.pay(request)
            except CentralRejected as exc:
                log.warning(
                    "payment sent again was refused; voiding it",
                    extra={"out_trade_no": out_trade_no, "error": str(exc)},
                )
        self._requests.pop(out_trade_no, None)
        async with self.keeper.lock:
            found = self._payment(sale_id, out_trade_no)
            if found is not None and not found[1].cancel_requested:
                await self.keeper.carry_out(rules.not_seen(found[0], out_trade_no))
        return None

    def _payment(self, sale_id: str, out_trade_no: str) -> tuple[Sale, CodePayment] | None:
        sale = self.keeper.find(sale_id)
        if sale is None:
            return None
        return sale, _payment_in(sale, out_trade_no)

    def _void_of(self, payment: CodePayment) -> PaymentVoid:
        return PaymentVoid(provider=payment.provider, amount_fen=payment.amount_fen, station_id=self.keeper.station_id)


def _payment_in(sale: Sale, out_trade_no: str) -> CodePayment:
    return next(p for p in sale.payments if p.out_trade_no == out_trade_no)
