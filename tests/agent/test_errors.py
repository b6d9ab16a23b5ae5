"""The local API's error tree (agent/errors.py) against its documentation (docs/checkout.md, "## Errors"): every
class answers the status and code the table gives it, over HTTP and in the one body shape; every code the table
lists is one the agent can give. The table is read from the page, so the two cannot drift apart.

Then the disagreements there were between two paths: a phone number the till cannot look up (no phone hash key)
was `409 conflict` from `GET /v1/members/lookup` and `409 not_now` from `POST .../phone`; both are now the
documented `not_now`. A malformed number was `invalid_request` from the lookup and `invalid_phone` from the
session; both are now the documented `invalid_phone`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from agent import errors
from agent.api import create_app
from agent.errors import AgentError
from central.payments.simulators import ServedApp, serve_in_thread
from tests.checkout_stack import Stack

DOC = Path(__file__).resolve().parents[2] / "docs" / "checkout.md"
TOKEN = "errors-test-token"


def documented_codes() -> dict[str, int]:
    """The `## Errors` table of docs/checkout.md: code -> status."""
    section = DOC.read_text(encoding="utf-8").split("## Errors", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\d{3}) \| `([a-z_]+)` \|", section, flags=re.MULTILINE)
    codes = {code: int(status) for status, code in rows}
    assert len(codes) == len(rows) >= 15, "the table lists each code once"
    return codes


def tree() -> list[type[AgentError]]:
    found, todo = [], [AgentError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return sorted(found, key=lambda cls: cls.__name__)


DOCUMENTED = documented_codes()
CLASSES = tree()


def test_the_tree_is_the_module_and_names_what_the_checkout_raised_as_not_now():
    assert {cls for cls in CLASSES if cls.__module__ == errors.__name__} == set(CLASSES)
    not_now = {cls.__name__ for cls in CLASSES if issubclass(cls, errors.NotNow) and cls is not errors.NotNow}
    assert len(not_now) >= 11 and {"SaleClosed", "PaymentStarted", "PhoneLookupOff"} <= not_now


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
def test_each_class_answers_the_status_its_code_is_documented_with(cls: type[AgentError]):
    assert cls.code in DOCUMENTED, f"{cls.__name__}'s code {cls.code!r} is not in docs/checkout.md's Errors table"
    assert cls.status == DOCUMENTED[cls.code], f"{cls.__name__}: {cls.status}, the table says {DOCUMENTED[cls.code]}"


@pytest.mark.parametrize("code", sorted(DOCUMENTED))
def test_each_documented_code_is_one_the_tree_gives(code: str):
    assert any(cls.code == code for cls in CLASSES), f"docs/checkout.md lists {code!r}; no error class gives it"


# --- over HTTP: one handler, one shape ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served() -> Iterator[ServedApp]:
    """The agent's app (no runtime behind it) with one route that raises the error class it is named after."""

    @asynccontextmanager
    async def no_runtime(app: FastAPI):
        yield

    app = create_app(no_runtime, TOKEN)

    @app.post("/v1/raise/{name}")
    async def raise_named(name: str) -> None:
        raise getattr(errors, name)("for the cashier", "给顾客", session_id="S-1")

    @app.get("/v1/bug")
    async def bug() -> None:
        raise RuntimeError("a bug")

    server = serve_in_thread(app)
    yield server
    server.stop()


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
def test_the_api_answers_each_class_with_its_status_code_and_both_messages(served: ServedApp, cls: type[AgentError]):
    answer = httpx.post(
        f"{served.url}/v1/raise/{cls.__name__}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
    )
    assert answer.status_code == DOCUMENTED[cls.code]
    assert answer.json() == {
        "error": cls.code,
        "message": "for the cashier",
        "message_zh": "给顾客",
        "session_id": "S-1",
    }


def test_the_frameworks_own_errors_and_a_bug_answer_in_the_same_shape(served: ServedApp):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=served.url, timeout=10) as client:
        answers = {
            "no token": client.post("/v1/raise/NotNow"),
            "unknown path": client.get("/v1/nowhere", headers=auth),
            "wrong method": client.get("/v1/raise/NotNow", headers=auth),
            "bug": client.get("/v1/bug", headers=auth),
        }
    expected = {
        "no token": (401, "unauthorized"),
        "unknown path": (404, "not_found"),
        "wrong method": (405, "method_not_allowed"),
        "bug": (500, "internal"),
    }
    for name, answer in answers.items():
        body = answer.json()
        assert (answer.status_code, body["error"]) == expected[name], (name, body)
        assert DOCUMENTED[body["error"]] == answer.status_code, name
        assert set(body) == {"error", "message", "message_zh"} and body["message"], (name, body)
    assert answers["bug"].json()["message_zh"] and "a bug" not in answers["bug"].text  # no internals leak
    assert answers["no token"].headers["www-authenticate"] == "Bearer"


# --- the disagreement resolved: a phone number the till cannot look up ----------------------------------------------


@pytest.fixture
def no_phone_key(tmp_path: Path) -> Iterator[Stack]:
    """A till without `privacy.phone_hash_key`: it cannot match a phone number to a member."""
    stack = Stack(tmp_path)
    del stack.env["POS_EDGE_PRIVACY__PHONE_HASH_KEY"]
    try:
        yield stack.start()
    finally:
        stack.close()


def test_a_phone_lookup_the_till_cannot_do_is_not_now_on_both_paths(no_phone_key: Stack):
    stack = no_phone_key
    sid = stack.open_session()["id"]
    by_session = stack.api.post(f"/v1/sessions/{sid}/phone", json={"phone": "13812345678", "confirmed": True})
    by_lookup = stack.api.get("/v1/members/lookup", params={"phone": "13812345678"})
    for answer in (by_session, by_lookup):
        body = answer.json()
        assert answer.status_code == 409 and body["error"] == "not_now", body
        assert "phone_hash_key" in body["message"], body  # says what to set
    assert by_session.json()["message"] == by_lookup.json()["message"]
    assert stack.session(sid)["member"] is None


def test_a_number_that_is_not_a_mobile_number_is_invalid_phone_on_both_paths(stack: Stack):
    sid = stack.open_session()["id"]
    for answer in (
        stack.api.post(f"/v1/sessions/{sid}/phone", json={"phone": "12345", "confirmed": False}),
        stack.api.get("/v1/members/lookup", params={"phone": "12345"}),
    ):
        body = answer.json()
        assert answer.status_code == 422 and body["error"] == "invalid_phone", body
        assert body["message_zh"] == "请输入正确的手机号码", body
