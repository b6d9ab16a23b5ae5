"""The chaos run's fault proxy (tests/chaos/proxy.py) does what each fault says, against a real HTTP server on
127.0.0.1: whether the upstream handled the request, and what the client saw."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from central.payments.simulators import serve_in_thread
from tests.central.plugin import read_body
from tests.chaos.proxy import FAULTS, ProxyThread


class Upstream:
    """A tiny ASGI app served by uvicorn: it answers every request with what it received, and counts them."""

    def __init__(self) -> None:
        self.handled: list[tuple[str, str, bytes]] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)

    def wait_handled(self, count: int, within: float = 10.0) -> list[tuple[str, str, bytes]]:
        with self._changed:
            self._changed.wait_for(lambda: len(self.handled) >= count, within)
            return list(self.handled)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        if scope["path"].endswith("/slow"):
            await asyncio.sleep(1.0)  # central at work
        with self._changed:
            self.handled.append((scope["method"], scope["path"], body))
            count = len(self.handled)
            self._changed.notify_all()
        if scope["path"] == "/stream":  # no Content-Length: uvicorn answers chunked
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            for part in (b"one,", b"two,", b"three"):
                await send({"type": "http.response.body", "body": part, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        answer = json.dumps({"path": scope["path"], "body": body.decode(), "count": count}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": answer})


@pytest.fixture
def upstream() -> Iterator[tuple[Upstream, int]]:
    app = Upstream()
    served = serve_in_thread(app)
    yield app, served.port
    served.stop()


@pytest.fixture
def proxy(upstream) -> Iterator[ProxyThread]:
    _, port = upstream
    thread = ProxyThread(port, seed=7, delay_s=(0.3, 0.3), blackhole_s=(30.0, 30.0)).start()
    yield thread
    thread.stop()


def only(fault: str) -> dict[str, float]:
    return {fault: 1.0}


def test_without_faults_requests_and_answers_pass_on_one_kept_alive_connection(proxy, upstream):
    app, _ = upstream
    with httpx.Client(base_url=proxy.url, timeout=5) as client:
        first = client.post("/v1/payments", json={"amount_fen": 1})
        streamed = client.get("/stream")
        chunked = client.post("/v1/transactions:batch", content=iter([b'{"rows":', b"[]}"]))  # sent chunked
    assert first.json() == {"path": "/v1/payments", "body": '{"amount_fen":1}', "count": 1}
    assert streamed.text == "one,two,three"
    assert chunked.json()["body"] == '{"rows":[]}'
    assert [path for _, path, _ in app.handled] == ["/v1/payments", "/stream", "/v1/transactions:batch"]
    assert proxy.counts() == {"requests": 3}


def test_reset_before_forwarding_the_upstream_never_sees_the_request(proxy, upstream):
    app, _ = upstream
    proxy.set_rates(only("reset_before"))
    with httpx.Client(base_url=proxy.url, timeout=5) as client, pytest.raises(httpx.TransportError):
        client.post("/v1/payments", json={"n": 1})
    proxy.off()
    with httpx.Client(base_url=proxy.url, timeout=5) as client:
        assert client.get("/after").status_code == 200
    assert [path for _, path, _ in app.handled] == ["/after"]
    assert proxy.counts()["reset_before"] == 1


def test_reset_after_forward_the_upstream_handles_it_and_the_client_hears_nothing(proxy, upstream):
    """The reset comes at once after forwarding (central still at work) or once central's answer is in: either way
    the client hears no answer byte and central handles the request."""
    app, _ = upstream
    proxy.set_rates(only("reset_after_forward"))
    heard_after = []
    for n in range(6):
        started = time.monotonic()
        with httpx.Client(base_url=proxy.url, timeout=5) as client, pytest.raises(httpx.TransportError):
            client.post("/v1/payments/slow", json={"n": n})
        heard_after.append(time.monotonic() - started)
    assert app.wait_handled(6) == [("POST", "/v1/payments/slow", f'{{"n":{n}}}'.encode()) for n in range(6)]
    assert min(heard_after) < 1.0 <= max(heard_after)  # reset while central worked, and after it answered
    assert proxy.counts()["reset_after_forward"] == 6
    assert proxy.route_counts() == {("reset_after_forward", "POST /v1/payments/slow"): 6}


def test_reset_after_answer_the_client_has_the_whole_answer_then_the_connection_is_reset(proxy, upstream):
    app, _ = upstream
    proxy.set_rates(only("reset_after_answer"))
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
        received = b""
        while b"\r\n\r\n" not in received or not received.endswith(b"}"):
            chunk = sock.recv(65536)
            assert chunk, f"closed before the whole answer: {received!r}"
            received += chunk
        assert b'"path": "/x"' in received
        with pytest.raises(ConnectionResetError):
            while sock.recv(65536):
                pass
    assert len(app.handled) == 1 and proxy.counts()["reset_after_answer"] == 1


def test_delay_holds_the_request_then_forwards_it(proxy, upstream):
    app, _ = upstream
    proxy.set_rates(only("delay"))
    started = time.monotonic()
    with httpx.Client(base_url=proxy.url, timeout=5) as client:
        assert client.get("/slow").json()["path"] == "/slow"
    assert time.monotonic() - started >= 0.3
    assert len(app.handled) == 1 and proxy.counts()["delay"] == 1


def test_blackhole_accepts_and_never_answers_until_turned_off(proxy, upstream):
    app, _ = upstream
    proxy.set_rates(only("blackhole"))
    with httpx.Client(base_url=proxy.url, timeout=0.5) as client, pytest.raises(httpx.ReadTimeout):
        client.post("/v1/payments", json={})
    proxy.set_rates({})  # the blackhole lasts its while, faults or not
    with httpx.Client(base_url=proxy.url, timeout=0.5) as client, pytest.raises(httpx.ReadTimeout):
        client.get("/still-dark")
    proxy.off()
    with httpx.Client(base_url=proxy.url, timeout=5) as client:
        assert client.get("/light").status_code == 200
    assert [path for _, path, _ in app.handled] == ["/light"]
    assert proxy.counts()["blackhole"] == 2


def test_refusing_connections_and_listening_again_on_the_same_port(proxy):
    proxy.refuse(True)
    with httpx.Client(base_url=proxy.url, timeout=2) as client, pytest.raises(httpx.ConnectError):
        client.get("/")
    proxy.refuse(False)
    with httpx.Client(base_url=proxy.url, timeout=5) as client:
        assert client.get("/").status_code == 200


def test_an_upstream_that_is_down_resets_the_client_and_is_counted(upstream):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]  # nothing listens there once closed
    thread = ProxyThread(dead_port).start()
    try:
        with httpx.Client(base_url=thread.url, timeout=2) as client, pytest.raises(httpx.TransportError):
            client.get("/")
        assert thread.counts() == {"upstream_refused": 1}
    finally:
        thread.stop()


def test_rates_are_checked_and_the_choice_follows_the_seed(upstream):
    _, port = upstream
    thread = ProxyThread(port, seed=3, delay_s=(0.0, 0.0))
    with pytest.raises(ValueError):
        thread.set_rates({"unplug": 0.1})
    with pytest.raises(ValueError):
        thread.set_rates({"delay": 0.7, "reset_before": 0.7})
    thread.start()
    try:
        thread.set_rates({"delay": 0.5}, money={})
        with httpx.Client(base_url=thread.url, timeout=5) as client:
            for _ in range(40):
                client.get("/x")
                client.post("/v1/payments", json={})  # money: no faults
        delays = thread.counts()["delay"]
        assert 8 < delays < 32 and set(thread.route_counts()) == {("delay", "GET /x")}
    finally:
        thread.stop()
    assert set(FAULTS) == {"reset_before", "reset_after_forward", "reset_after_answer", "delay", "blackhole"}
