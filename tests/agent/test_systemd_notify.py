"""The systemd notify protocol through a real AF_UNIX datagram socket, as systemd itself listens for it."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from agent.systemd_notify import Notifier, keep_alive, report_status, status_line, watchdog_interval_s

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def systemd_socket(tmp_path: Path):
    """What systemd holds for a Type=notify unit: a datagram socket the service writes to."""
    path = tmp_path / "notify"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(path))
    yield path, listener
    listener.close()


def receive(listener: socket.socket, timeout: float = 30.0) -> dict[str, str]:
    listener.settimeout(timeout)
    data = listener.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.splitlines())


def pending(listener: socket.socket) -> list[dict[str, str]]:
    """The datagrams already queued, without waiting."""
    messages = []
    listener.setblocking(False)
    try:
        while True:
            messages.append(dict(line.split("=", 1) for line in listener.recv(4096).decode().splitlines()))
    except BlockingIOError:
        return messages
    finally:
        listener.setblocking(True)


def test_ready_status_and_stopping_reach_the_socket(systemd_socket):
    path, listener = systemd_socket
    notifier = Notifier({"NOTIFY_SOCKET": str(path)})
    assert notifier.ready("online · outbox empty\nprinter ready")
    message = receive(listener)
    assert message["READY"] == "1" and message["MAINPID"] == str(os.getpid())
    assert message["STATUS"] == "online · outbox empty printer ready"  # one line: a newline would start a new field
    notifier.stopping()
    assert receive(listener)["STOPPING"] == "1"


def test_an_abstract_socket_name_is_written_with_a_leading_at():
    name = f"pos-edge-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(b"\0" + name.encode())
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert notifier.watchdog()
        assert receive(listener) == {"WATCHDOG": "1"}


def test_outside_systemd_nothing_is_sent_and_nothing_fails():
    notifier = Notifier({})
    assert not notifier.enabled
    assert not notifier.ready("x") and not notifier.watchdog()
    assert not Notifier({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled  # a VM manager's socket: not ours to speak


def test_a_vanished_socket_is_logged_not_raised(tmp_path, caplog):
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert notifier.status("online") is False
    assert "systemd notification not sent" in caplog.text


def test_watchdog_interval_is_half_of_what_systemd_asks_and_only_for_this_process():
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 15.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None  # meant for another process
    assert watchdog_interval_s({}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "soon"}) is None


def test_watchdog_pings_keep_their_cadence_and_stop_while_the_loop_is_blocked(systemd_socket):
    path, listener = systemd_socket
    notifier = Notifier({"NOTIFY_SOCKET": str(path)})
    interval = 0.05
    seen_while_blocked: list[list] = []

    async def scenario() -> None:
        task = asyncio.create_task(keep_alive(notifier, interval))
        await asyncio.sleep(interval * 4)
        before = pending(listener)
        # A handler that blocks the loop (what a stuck call on the loop does): no ping may leave meanwhile.
        time.sleep(interval * 6)
        seen_while_blocked.append(pending(listener))
        await asyncio.sleep(interval * 3)  # unblocked: pings resume
        after = pending(listener)
        task.cancel()
        assert len(before) >= 2 and all(m == {"WATCHDOG": "1"} for m in before)
        assert after, "pings resume once the loop answers again"

    started = time.monotonic()
    asyncio.run(scenario())
    elapsed = time.monotonic() - started
    assert seen_while_blocked == [[]]
    assert elapsed >= interval * 13  # the cadence only ever waits, it never hurries


def test_status_is_sent_only_when_it_changes(systemd_socket):
    path, listener = systemd_socket
    notifier = Notifier({"NOTIFY_SOCKET": str(path)})
    lines = iter(["online · outbox empty", "online · outbox empty", "OFFLINE", "OFFLINE"])
    ticks = 0

    async def read() -> str:
        return next(lines)

    async def tick(_: float) -> None:
        nonlocal ticks
        ticks += 1
        if ticks == 4:
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(report_status(notifier, read, 5, sleep=tick))
    assert [m["STATUS"] for m in pending(listener)] == ["online · outbox empty", "OFFLINE"]


def test_status_line_says_what_a_person_checks_first():
    assert status_line(True, 0, "ready", False) == "online · outbox empty · printer ready"
    assert (
        status_line(False, 12, "paper_out", True)
        == "OFFLINE (selling offline) · outbox 12 waiting · printer paper_out · sale open"
    )
    assert status_line(True, 0, None, False).endswith("no printer")


def test_the_agent_says_ready_only_once_its_api_answers_and_stopping_on_sigterm(systemd_socket, tmp_path):
    path, listener = systemd_socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = tmp_path / "agent.toml"
    config.write_text(
        '[store]\nid = "SH001"\nname = "徐汇店"\n[station]\nid = "T01"\n[central]\nurl = "http://127.0.0.1:9"\n'
        f'[storage]\ndatabase = "{tmp_path / "agent.db"}"\n[api]\nport = {port}\n'
        '[devices.printer]\nurl = "sim://printer"\n'
    )
    env = {**os.environ, "NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "200000"}
    agent = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--config", str(config)], cwd=ROOT, env=env, stderr=subprocess.DEVNULL
    )
    try:
        ready = receive(listener)
        assert ready["READY"] == "1" and ready["MAINPID"] == str(agent.pid)
        assert ready["STATUS"].endswith("outbox empty · printer ready"), ready
        # READY=1 means the API already listens: no retry needed.
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        assert receive(listener) == {"WATCHDOG": "1"}
        agent.send_signal(signal.SIGTERM)
        message = receive(listener)
        while "STOPPING" not in message:
            assert message.keys() <= {"WATCHDOG", "STATUS"}
            message = receive(listener)
        # uvicorn ends by re-raising the signal it caught: systemd counts a SIGTERM death as a clean stop.
        assert agent.wait(timeout=30) == -signal.SIGTERM
        assert all("WATCHDOG" not in m for m in pending(listener)), "no ping after STOPPING=1"
    finally:
        agent.kill()
        agent.wait()
