"""The agent's client of the central service (docs/ARCHITECTURE.md, "The central API"), on httpx.

Errors are translated at this edge into one small tree, so callers act on what they can act on: the WAN is
down (CentralUnreachable), central said no to this request (CentralRejected), central is in trouble and may say
when to come back (CentralServerError, with `retry_after`), or central answered something that is not the
contract (CentralBadResponse). A response is parsed whole into the contract's models before anything is applied.
"""

from __future__ import annotations

import email.utils
from datetime import UTC, date, datetime
from typing import TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from agent import __version__
from agent.settings import CentralSettings
from central.contract import (
    API_PREFIX,
    BatchIn,
    BatchResult,
    ChangesPage,
    DaySummary,
    EnrolRequest,
    EnrolResult,
    IdentifyRequest,
    IdentifyResult,
    MemberChange,
    MemberLookup,
    Payment,
    PaymentRequest,
    PaymentVoid,
    PublicKeys,
    Refund,
    RefundRequest,
    TransactionIn,
)

Model = TypeVar("Model", bound=BaseModel)


class CentralError(Exception):
    """A request to the central service failed; the message says what happened."""


class CentralUnreachable(CentralError):
    """No answer: the store's WAN, DNS, or central itself is down, or it took longer than the timeout."""


class CentralNotReached(CentralUnreachable):
    """No connection could be made: the request never left the store, so nothing was done at central."""


class CentralTimedOut(CentralUnreachable):
    """The request went out and no answer came within the timeout."""


class CentralRejected(CentralError):
    """Central refused this request (4xx other than 429): sending it again unchanged will not help."""

    def __init__(self, message: str, status: int, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code


class CentralServerError(CentralError):
    """Central failed (5xx) or asked us to slow down (429); `retry_after` is its wish in seconds, if it said."""

    def __init__(self, message: str, status: int, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class CentralBadResponse(CentralError):
    """Central answered, but not with what the contract says: nothing of it is applied."""


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """`Retry-After` as seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class CentralClient:
    def __init__(self, settings: CentralSettings, store_id: str, transport: httpx.AsyncBaseTransport | None = None):
        self.base_url = settings.url
        self._read_timeout_s = settings.read_timeout_s
        self._connect_timeout_s = settings.connect_timeout_s
        self._client = httpx.AsyncClient(
            base_url=settings.url + API_PREFIX,
            timeout=httpx.Timeout(self._read_timeout_s, connect=self._connect_timeout_s),
            headers={
                "Authorization": f"Bearer {settings.token.get_secret_value()}",
                "X-Store-Id": store_id,
                "User-Agent": f"pos-edge/{__version__}",
            },
            transport=transport,
        )
        self.store_id = store_id

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> CentralClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- the contract ----------------------------------------------------------------------------------------

    async def member_changes(self, cursor: str | None, limit: int) -> ChangesPage:
        params = {"limit": limit} | ({"cursor": cursor} if cursor else {})
        return await self._call("GET", "/members/changes", ChangesPage, params=params)

    async def push_transactions(self, rows: list[TransactionIn]) -> BatchResult:
        body = BatchIn(transactions=rows).model_dump(mode="json")
        result = await self._call("POST", "/transactions:batch", BatchResult, json=body)
        sent = [row.id for row in rows]
        answered = [row.id for row in result.results]
        if answered != sent:
            raise CentralBadResponse(f"central answered {len(answered)} verdicts for {len(sent)} rows, or out of order")
        return result

    async def day_summary(self, business_day: date, station_id: str | None = None) -> DaySummary:
        params = {"station_id": station_id} if station_id else None
        return await self._call(
            "GET", f"/stores/{self.store_id}/days/{business_day.isoformat()}/summary", DaySummary, params=params
        )

    async def member_code_keys(self) -> PublicKeys:
        return await self._call("GET", "/keys/member-code", PublicKeys)

    async def lookup_member(self, kind: str, value: str) -> MemberChange | None:
        """The member holding one identifier (card_no, unionid or phone_hash), or None when central knows none."""
        try:
            found = await self._call("GET", "/members/lookup", MemberLookup, params={kind: value})
        except CentralRejected as exc:
            if exc.status == 404:
                return None
            raise
        return found.member

    async def enrol(self, request: EnrolRequest, idempotency_key: str) -> EnrolResult:
        """Enrol a customer, or find the member they are; the same key again is the same enrolment."""
        return await self._call(
            "POST",
            "/members",
            EnrolResult,
            json=request.model_dump(mode="json", exclude_none=True),
            headers={"Idempotency-Key": idempotency_key},
        )

    async def identify_payer(self, auth_code: str) -> IdentifyResult:
        """Who is about to pay with this payment code (nothing is charged)."""
        return await self._call(
            "POST", "/payments/identify", IdentifyResult, json=IdentifyRequest(auth_code=auth_code).model_dump()
        )

    async def pay(self, request: PaymentRequest) -> Payment:
        """Charge a payment code. Safe to send again after a timeout: the same out_trade_no is the same payment."""
        return await self._call("POST", "/payments", Payment, json=request.model_dump(mode="json", exclude_none=True))

    async def payment(self, out_trade_no: str, wait_s: float = 0) -> Payment | None:
        """A payment as central knows it (after waiting up to `wait_s` for a change), or None when central has not
        seen it — yet: a request still on its way may arrive after this answer, so None never means "not charged".
        Only `void_payment` settles a payment central has not seen."""
        params = {"wait": wait_s} if wait_s else None
        timeout = httpx.Timeout(self._read_timeout_s + wait_s, connect=self._connect_timeout_s)
        try:
            return await self._call("GET", f"/payments/{out_trade_no}", Payment, params=params, timeout=timeout)
        except CentralRejected as exc:
            if exc.status == 404:
                return None
            raise

    async def void_payment(self, out_trade_no: str, request: PaymentVoid) -> Payment:
        """Give up a payment whether central has seen it or not: the answer is final on "not charged" (FAILED,
        REVERSED) or REVERSING (being taken back). Safe to send again."""
        return await self._call("POST", f"/payments/{out_trade_no}/void", Payment, json=request.model_dump(mode="json"))

    async def refund_payment(self, out_trade_no: str, request: RefundRequest) -> Refund:
        """Give back part or all of a paid payment; the same out_refund_no again is the same refund."""
        return await self._call(
            "POST", f"/payments/{out_trade_no}/refunds", Refund, json=request.model_dump(mode="json", exclude_none=True)
        )

    async def refund(self, out_trade_no: str, out_refund_no: str) -> Refund:
        """A refund as central knows it."""
        return await self._call("GET", f"/payments/{out_trade_no}/refunds/{out_refund_no}", Refund)

    async def probe(self, timeout: float) -> bool:
        """A quick "is central there?" for deciding online/offline in front of a customer. A connection refused or
        a timeout says no; a connection reset mid-answer may be one lost packet, so it asks once more."""
        for last in (False, True):
            try:
                response = await self._client.get("/keys/member-code", timeout=timeout)
            except (httpx.ConnectError, httpx.TimeoutException):
                return False
            except httpx.HTTPError:
                if last:
                    return False
                continue
            return response.status_code < 500
        return False

    # --- one request -----------------------------------------------------------------------------------------

    async def _call(self, method: str, path: str, model: type[Model], **kwargs) -> Model:
        try:
            response = await self._client.request(method, path, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise CentralNotReached(f"cannot reach central {self.base_url}: {exc or type(exc).__name__}") from exc
        except httpx.TimeoutException as exc:
            raise CentralTimedOut(
                f"central {self.base_url} did not answer {method} {path} in time ({type(exc).__name__})"
            ) from exc
        except httpx.TransportError as exc:
            raise CentralUnreachable(f"cannot reach central {self.base_url}: {exc or type(exc).__name__}") from exc
        if response.status_code == 429 or response.status_code >= 500:
            raise CentralServerError(
                f"central answered {response.status_code} to {method} {path}",
                response.status_code,
                retry_after_seconds(response.headers.get("Retry-After")),
            )
        if response.status_code >= 400:
            code, message = _error_of(response)
            raise CentralRejected(
                f"central refused {method} {path} ({response.status_code} {code}): {message}",
                response.status_code,
                code,
            )
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            raise CentralBadResponse(
                f"central's answer to {method} {path} is not a valid {model.__name__}: {exc.error_count()} problem(s), first: {exc.errors()[0]['msg']}"
            ) from exc


def _error_of(response: httpx.Response) -> tuple[str, str]:
    try:
        body = response.json()
        return str(body.get("error", "error")), str(body.get("message", ""))[:300]
    except (ValueError, AttributeError):
        return "error", response.text[:300]
