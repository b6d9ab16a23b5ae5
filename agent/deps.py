"""What the local API's handlers declare they need, as typed aliases (the shape of `central/deps.py`): the running
agent (`StateDep`) and its parts narrowed to what a handler uses (`CheckoutDep`, `RefundsDep`, `PrinterDep`, ...),
and the station's token (`require_token`, on every /v1 router). Tests may swap any of them through
`app.dependency_overrides`.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer

from agent.approval import Approvals
from agent.checkout import Checkout
from agent.devices import StationDevices
from agent.errors import Internal, InvalidRequest, NotFound, Unauthorized, Unavailable, error_responses
from agent.print_queue import PrintQueue
from agent.receipt_printing import ReceiptPrinting
from agent.refunds import Refunds
from agent.scans import ScanRouter
from agent.sync import Sync

if TYPE_CHECKING:
    # The runtime builds the app from this package, so the class is named for type checkers only; FastAPI needs
    # no more than the dependency to call.
    from agent.runtime import AgentState

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="StationToken",
    description="the station's API token, `api.token` (environment: POS_EDGE_API__TOKEN)",
)
# Event streams and images opened by a browser cannot set a header: a GET may carry the token in its URL instead.
token_in_query = APIKeyQuery(
    name="token",
    auto_error=False,
    scheme_name="StationTokenInQuery",
    description="the station's API token, for a GET only (event streams, receipt previews)",
)


def check_token(request: Request, credentials: HTTPAuthorizationCredentials | None) -> None:
    """The station's token as a bearer header, or as `?token=` on a GET; nothing to check while none is set."""
    expected: str = request.app.state.api_token
    if not expected:
        return
    given = credentials.credentials if credentials is not None else ""
    if not given and request.method == "GET":
        given = request.query_params.get("token", "")
    if not secrets.compare_digest(given.encode(), expected.encode()):
        raise Unauthorized("send the station's API token: Authorization: Bearer <api.token>")


def require_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> None:
    check_token(request, credentials)


# Every /v1 router: the station's token, and the errors any of its routes may give.
TOKEN_REQUIRED = [Depends(require_token)]
V1_ERRORS = error_responses(Unauthorized, InvalidRequest, Internal, Unavailable)


def accepts_token_in_query(token: Annotated[str | None, Depends(token_in_query)]) -> None:
    """Declares `?token=` on the routes a browser opens directly; `require_token` checks it."""


def get_state(request: Request) -> AgentState:
    state = getattr(request.app.state, "agent", None)
    if state is None:
        raise Unavailable("the agent is starting: retry shortly")
    return state


StateDep = Annotated["AgentState", Depends(get_state)]


def get_checkout(state: StateDep) -> Checkout:
    if state.checkout is None:
        raise Unavailable("the checkout is not open yet: retry shortly")
    return state.checkout


def get_refunds(state: StateDep) -> Refunds:
    if state.refunds is None:
        raise Unavailable("refunds are not open yet: retry shortly")
    return state.refunds


def get_sync(state: StateDep) -> Sync:
    if state.sync is None:
        raise Unavailable("sync is not open yet: retry shortly")
    return state.sync


def get_devices(state: StateDep) -> StationDevices:
    if state.devices is None:
        raise Unavailable("the devices are not open yet: retry shortly")
    return state.devices


def get_scans(state: StateDep) -> ScanRouter:
    if state.scans is None:
        raise Unavailable("the scan router is not open yet: retry shortly")
    return state.scans


def get_approvals(state: StateDep) -> Approvals:
    return state.approvals


CheckoutDep = Annotated[Checkout, Depends(get_checkout)]
ApprovalsDep = Annotated[Approvals, Depends(get_approvals)]
RefundsDep = Annotated[Refunds, Depends(get_refunds)]
SyncDep = Annotated[Sync, Depends(get_sync)]
DevicesDep = Annotated[StationDevices, Depends(get_devices)]
ScansDep = Annotated[ScanRouter, Depends(get_scans)]


def get_printer(devices: DevicesDep) -> PrintQueue:
    if devices.printer is None:
        raise NotFound("no printer is configured: set [devices.printer] in the settings")
    return devices.printer


def get_receipts(state: StateDep) -> ReceiptPrinting | None:
    return state.receipts


PrinterDep = Annotated[PrintQueue, Depends(get_printer)]
ReceiptsDep = Annotated[ReceiptPrinting | None, Depends(get_receipts)]  # None: the station has no printer
