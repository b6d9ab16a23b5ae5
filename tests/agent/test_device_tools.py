"""Trying devices as a store's IT person does: `pos-edge scan-test` on a serial scanner and a camera clip,
`pos-edge print-test` on a network printer, and the running agent's device API with simulated devices."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from drivers.escpos_decode import QrCode, TextLine, decode
from tests.agent.test_cli import free_port
from tests.drivers.test_camera import WECHAT, clip, phone, write_video
from tests.support.poll import eventually

ROOT = Path(__file__).resolve().parents[2]


def pos_edge(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "agent", *args],
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,
    )


def test_scan_test_on_a_serial_scanner_prints_classified_json_lines():
    master, slave = os.openpty()
    try:
        tool = pos_edge("scan-test", "--scanner", f"serial://{os.ttyname(slave)}?baudrate=9600", "--count", "2")
        # The tool reports the port connected on stderr before it reads: only then is it listening.
        assert "connected" in tool.stderr.readline()
        os.write(master, b"134512345678901234\r\n4006381333931\r\n")
        out, err = tool.communicate(timeout=20)
    finally:
        os.close(master)
        os.close(slave)
    assert tool.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(line["kind"], line["provider"]) for line in lines] == [("payment", "wechat"), ("product", "ean13")]
    assert lines[0]["value"] == "1345**********1234"


def test_scan_test_on_a_camera_clip_ends_at_the_end_of_the_file(tmp_path):
    video = write_video(tmp_path / "counter.avi", clip((phone(None), 10), (phone(WECHAT), 45), (phone(None), 10)))
    tool = pos_edge("scan-test", "--scanner", f"camera://{video}")
    out, err = tool.communicate(timeout=60)
    assert tool.returncode == 0, err
    (line,) = [json.loads(line) for line in out.splitlines()]  # one phone held for 1.5 s is one scan
    assert (line["kind"], line["provider"]) == ("payment", "wechat")
    assert "source ended" in err


def test_print_test_sends_the_test_page_to_a_network_printer(printer_server, tmp_path):
    tool = pos_edge("print-test", "--printer", printer_server.url, "--config", str(tmp_path / "absent.toml"))
    out, err = tool.communicate(timeout=60)
    assert tool.returncode == 0, err
    assert f"test page sent to {printer_server.url}" in out
    (job,) = printer_server.wait_for_jobs(1)
    elements = decode(job)
    text = "\n".join(e.text for e in elements if isinstance(e, TextLine))
    assert "打印测试" in text and "，" in text  # Chinese and fullwidth punctuation, not '?'
    assert any(isinstance(e, QrCode) for e in elements)


def test_print_test_to_a_printer_that_is_off_is_one_clear_line(tmp_path):
    port = free_port()
    tool = pos_edge("print-test", "--printer", f"tcp://127.0.0.1:{port}", "--config", str(tmp_path / "absent.toml"))
    out, err = tool.communicate(timeout=60)
    assert tool.returncode == 1
    assert err.startswith(f"error: printer tcp://127.0.0.1:{port} refused the connection") and "Traceback" not in err


@pytest.fixture
def running_agent(tmp_path):
    config = tmp_path / "agent.toml"
    config.write_text(
        '[store]\nid = "SH001"\nname = "徐汇店"\n[station]\nid = "T01"\n[central]\nurl = "http://127.0.0.1:9"\n'
        '[[devices.scanners]]\nid = "scanner-1"\nurl = "sim://scanner-1"\n'
        '[devices.printer]\nurl = "sim://printer"\npaper_width_mm = 58\n'
        '[storage]\ndatabase = "agent.db"\n'
    )
    port = free_port()
    agent = pos_edge("run", "--config", str(config), env={**os.environ, "POS_EDGE_API__PORT": str(port)})
    for line in agent.stderr:
        if "Uvicorn running" in line or agent.poll() is not None:
            break
    yield httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5), tmp_path
    agent.terminate()
    agent.wait(timeout=15)


def test_agent_routes_simulated_scans_and_previews_receipts(running_agent):
    client, folder = running_agent
    devices = client.get("/v1/devices").json()
    assert devices["scanners"][0] | {"since": None} == {
        "id": "scanner-1",
        "state": "connected",
        "reason": None,
        "since": None,
        "simulated": True,
    }
    assert devices["printer"]["state"] == "ready"

    assert client.post("/v1/devices/scanner-1/scan", json={"text": "]C0134512345678901234"}).status_code == 202
    assert client.post("/v1/devices/nope/scan", json={"text": "1"}).status_code == 404
    scan = eventually(lambda: client.get("/v1/scans").json())[0]
    assert (scan["kind"], scan["provider"], scan["value"], scan["device_id"]) == (
        "payment",
        "wechat",
        "1345**********1234",
        "scanner-1",
    )

    job = client.post("/v1/printer/test-page").json()
    printed = eventually(
        lambda: next(
            (j for j in client.get("/v1/printer/jobs").json() if j["id"] == job["id"] and j["status"] == "printed"),
            None,
        )
    )
    preview = client.get(printed["preview_url"])
    assert preview.headers["content-type"] == "image/png" and preview.content.startswith(b"\x89PNG")
    assert list((folder / "receipts").glob("*.png"))

    console = client.get("/", follow_redirects=True)
    assert console.status_code == 200 and "设备控制台" in console.text
