"""Fuzzing central's API from its own OpenAPI document with schemathesis: the real service on 127.0.0.1 on a
SQLite database, WeChat Pay behind it played by the simulator, every request with a store's token and id, and
no answer may be a server error (5xx).

The stateful run follows OpenAPI links added to a copy of the document: a payment's out_trade_no into reading,
reversing and refunding it, a refund's number into reading it. Some generated payment codes are the simulator's
codes that pay (or pay and then refund in a troubled way), so refunds of real payments are reached. `wait` is
capped at half a second in the copy so a long-poll cannot eat the time budget. Plus plain regression tests for
what fuzzing found.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis

from central.payments.simulators import serve_in_thread
from central.payments.simulators.wechat import WeChatSimulator
from tests.agent.test_fuzz_api import checked_workflow, fuzz_each_operation, run_workflow
from tests.central.plugin import CentralServer, central_settings
from tests.support.credentials import APPID, MCH_ID, PHONE_KEY, WECHAT_KEY
from tests.support.timings import STORE_PAYMENTS

# Schemathesis draws from `random` inside its strategies; Hypothesis deprecates that, nothing to act on here.
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
STORE = "S1"
# Codes the WeChat simulator pays at once (last two digits 00-09), or pays and then troubles the first refund
# (60: made but answered with an HTML page, 61: SYSTEMERROR and not made, 62: NOTENOUGH).
PAYING_CODE = r"^13[0-9]{14}(0[0-9]|6[0-2])$"


def assert_no_server_error(response, label: str) -> None:
    assert response.status_code < 500, f"{label}: {response.status_code} {response.text[:500]}"


def with_links(document: dict) -> dict:
    document = copy.deepcopy(document)
    paths = document["paths"]

    def operation_id(method: str, path: str) -> str:
        return paths[path][method]["operationId"]

    def link(
        source: tuple[str, str], statuses: tuple[str, ...], name: str, target: tuple[str, str], parameters: dict
    ) -> None:
        for status in statuses:
            response = paths[source[1]][source[0]]["responses"].setdefault(status, {"description": "linked"})
            response.setdefault("links", {})[name] = {"operationId": operation_id(*target), "parameters": parameters}

    pay = ("post", "/v1/payments")
    trade = {"out_trade_no": "$response.body#/out_trade_no"}
    for target in (
        ("get", "/v1/payments/{out_trade_no}"),
        ("post", "/v1/payments/{out_trade_no}/reverse"),
        ("post", "/v1/payments/{out_trade_no}/refunds"),
    ):
        link(pay, ("200", "201"), f"{target[0]}{target[1]}", target, trade)
        link(("get", "/v1/payments/{out_trade_no}"), ("200",), f"{target[0]}{target[1]}", target, trade)
    refund = ("post", "/v1/payments/{out_trade_no}/refunds")
    # Now and then all of a payment back: a refund the provider makes, not only refusals.
    whole = {
        "operationId": operation_id(*refund),
        "parameters": trade,
        "requestBody": {"amount_fen": "$response.body#/amount_fen"},
    }
    for status in ("200", "201"):
        paths["/v1/payments"]["post"]["responses"][status].setdefault("links", {})["refund-all"] = whole
    both = {"out_trade_no": "$response.body#/out_trade_no", "out_refund_no": "$response.body#/out_refund_no"}
    link(refund, ("200", "201"), "get-refund", ("get", "/v1/payments/{out_trade_no}/refunds/{out_refund_no}"), both)
    link(refund, ("200", "201"), "refund-again", refund, trade)

    # Payment codes: any text, or one the simulator pays.
    request = document["components"]["schemas"]["PaymentRequest"]["properties"]
    request["auth_code"] = {"anyOf": [request["auth_code"], {"type": "string", "pattern": PAYING_CODE}]}
    for methods in paths.values():
        for operation in methods.values():
            for parameter in operation.get("parameters", []):
                if parameter["name"] == "wait":
                    parameter["schema"]["maximum"] = 0.5
    return document


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CentralServer, dict[str, str]]]:
    where = Path(tmp_path_factory.mktemp("fuzz-central"))
    wechat = WeChatSimulator(
        appid=APPID, mch_id=MCH_ID, api_key=WECHAT_KEY, userpaying_seconds=0.3, slow_seconds=0.7, refund_seconds=0.2
    )
    served = serve_in_thread(wechat.app())
    settings_ = central_settings(
        f"sqlite:///{where / 'central.db'}",
        wechat_base_url=served.url,
        wechat_appid=APPID,
        wechat_mch_id=MCH_ID,
        wechat_api_key=WECHAT_KEY,
        phone_hash_key=PHONE_KEY,
        **STORE_PAYMENTS,
    )
    server = CentralServer(settings_)
    server.start()
    store = server.add_store(STORE)
    server.add_member(phone="13812345678", identifiers={"card_no": "8800012345678"})
    yield server, store.headers
    server.close()
    served.stop()


@pytest.fixture(scope="module")
def central_schema(service):
    server, _ = service
    document = httpx.get(f"{server.url}/openapi.json", timeout=10).json()  # the document central serves
    schema = schemathesis.openapi.from_dict(with_links(document))
    schema.config.update(base_url=server.url)
    return schema


def test_no_operation_answers_a_server_error(service, central_schema):
    _, headers = service
    failures = fuzz_each_operation(central_schema, headers, 8, assert_no_server_error)
    assert not failures, "\n".join(failures)


def test_payments_and_their_refunds_driven_by_links_never_answer_a_server_error(service, central_schema):
    _, headers = service
    seen: Counter[tuple[str, int]] = Counter()
    failures: list[str] = []
    workflow = checked_workflow(central_schema.include(tag="payments"), headers, assert_no_server_error, seen, failures)
    run_workflow(workflow, failures, scenarios=15, steps=15)
    # Real payments were made and then read or acted on by their number, not only 404s for made-up ones.
    assert seen[("POST /v1/payments", 201)] > 0, seen
    followed = sum(
        n for (operation, status), n in seen.items() if "{out_trade_no}" in operation and status in (200, 201, 409)
    )
    assert followed > 0, seen


# --- what fuzzing found, kept as plain regression tests ------------------------------------------------------


@pytest.mark.parametrize("cursor", ["9223372036854775808", "9999999999999999999"])
def test_a_cursor_past_64_bits_is_refused_as_not_ours_not_a_500(service, cursor):
    server, headers = service
    answer = httpx.get(f"{server.url}/v1/members/changes", params={"cursor": cursor}, headers=headers)
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_cursor", answer.text
    largest = httpx.get(f"{server.url}/v1/members/changes", params={"cursor": str(2**63 - 1)}, headers=headers)
    assert largest.status_code == 200 and largest.json()["changes"] == []


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_a_body_with_a_non_finite_number_is_a_422_in_strict_json(service, number):
    server, headers = service
    for path, raw in [
        (
            "/v1/payments",
            f'{{"out_trade_no": "T1", "auth_code": "134512345678901200", "amount_fen": {number}, "station_id": "T01"}}',
        ),
        ("/v1/payments/T1/refunds", f'{{"out_refund_no": "R1", "amount_fen": {number}}}'),
        ("/v1/payments/identify", f'{{"auth_code": {number}}}'),
    ]:
        answer = httpx.post(f"{server.url}{path}", content=raw, headers=headers | {"Content-Type": "application/json"})
        assert answer.status_code == 422, (path, answer.text)
        body = json.loads(answer.text, parse_constant=lambda token, text=answer.text: pytest.fail(f"{token} in {text}"))
        assert body["error"] == "invalid" and body["message"].startswith(("body.amount_fen:", "body.auth_code:")), body


def journal_row(**changes) -> dict:
    row = {
        "id": str(uuid.uuid4()),
        "station_id": "T01",
        "kind": "sale",
        "business_day": "2026-01-01",
        "created_at": "2026-01-01T00:00:00Z",
        "total_fen": 100,
        "body": {"lines": [], "tenders": [{"kind": "cash", "amount_fen": 100}]},
        "prev_hash": "0" * 64,
        "hash": "1" * 64,
    }
    return row | changes


@pytest.mark.parametrize(
    "row",
    [
        journal_row(total_fen=2**70),
        journal_row(points_earned=2**63),
        journal_row(points_redeemed=-(2**64)),
        journal_row(body={"lines": [], "tenders": [{"kind": "cash", "amount_fen": 2**64}]}),
    ],
    ids=["total", "points_earned", "points_redeemed", "tender"],
)
def test_a_journal_row_with_a_number_past_64_bits_is_rejected_alone_not_a_500(service, row):
    """A 500 here would block the store's outbox behind that row for good: the row is refused, the rest stored."""
    server, headers = service
    good = journal_row()
    answer = httpx.post(f"{server.url}/v1/transactions:batch", json={"transactions": [row, good]}, headers=headers)
    assert answer.status_code == 200, answer.text
    first, second = answer.json()["results"]
    assert (first["status"], first["reason"]) == ("rejected", "malformed") and second["status"] == "accepted"


@pytest.mark.parametrize("path", ["/v1/payments", "/v1/payments/{paid}/refunds"])
def test_an_amount_past_64_bits_is_a_422_and_nothing_is_charged(service, path):
    server, headers = service
    paid = f"P{uuid.uuid4().hex[:16]}"
    made = httpx.post(
        f"{server.url}/v1/payments",
        json={"out_trade_no": paid, "auth_code": "134512345678901200", "amount_fen": 100, "station_id": "T01"},
        headers=headers,
    )
    assert made.status_code == 201 and made.json()["state"] == "SUCCESS", made.text
    body = {
        "out_trade_no": f"P{uuid.uuid4().hex[:16]}",
        "auth_code": "134512345678901300",
        "station_id": "T01",
        "out_refund_no": "R1",
    }
    answer = httpx.post(f"{server.url}{path.format(paid=paid)}", json=body | {"amount_fen": 2**64}, headers=headers)
    assert answer.status_code == 422 and answer.json()["message"].startswith("body.amount_fen:"), answer.text
    assert httpx.get(f"{server.url}/v1/payments/{body['out_trade_no']}", headers=headers).status_code == 404
