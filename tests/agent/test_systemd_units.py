"""The units, the kiosk's start page and the udev rules in systemd/.

`systemd-analyze security --offline` scores pos-edge.service (exposure at most 2.5) and `systemd-analyze verify`
checks both units with the programs they name present; the kiosk start page is written the way the kiosk unit
runs it, then opened in Debian's Chromium to see the token arrive in the kiosk screen without ever being on a
command line; `pos-edge devices --udev`'s rules are made from a sysfs tree laid out the way the kernel does.
"""

from __future__ import annotations

import http.server
import os
import re
import shutil
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from agent.udev import UdevDevice, rules, usb_identity
from drivers.discovery import discover

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "systemd"
IN_CI = os.environ.get("CI") == "true"
MAX_EXPOSURE = 2.5
TOKEN = "0f" * 32


def _missing(what: str) -> None:
    message = f"{what} is missing: run `make setup` (it installs the Debian packages these checks need)"
    pytest.fail(message) if IN_CI else pytest.skip(message)


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        _missing("systemd-analyze (Debian's systemd package)")
    return found


def unit_lines(unit: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in (UNITS / unit).read_text().splitlines() if line.startswith(f"{key}=")]


# --- the units --------------------------------------------------------------------------------------------------


def test_the_agent_unit_scores_an_exposure_of_at_most_2_5():
    # --threshold= counts in tenths: the default 100 is the worst exposure, 10.0.
    done = subprocess.run(
        [
            systemd_analyze(),
            "security",
            "--offline=yes",
            f"--threshold={int(MAX_EXPOSURE * 10)}",
            str(UNITS / "pos-edge.service"),
        ],
        capture_output=True,
        text=True,
    )
    score = re.search(r"Overall exposure level for pos-edge\.service: (\d+\.\d)", done.stdout)
    assert score, done.stdout + done.stderr
    assert done.returncode == 0 and float(score.group(1)) <= MAX_EXPOSURE, done.stdout


@pytest.fixture
def box(tmp_path: Path) -> Path:
    """A root holding what the units name: the system's own units, the agent's entry point and kiosk page
    where the installer puts them, and Debian's cage and chromium."""
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for unit in ("pos-edge.service", "pos-edge-kiosk.service"):
        shutil.copy(UNITS / unit, root / "etc/systemd/system" / unit)
    release = root / "opt/pos-edge/current"
    (release / "bin").mkdir(parents=True)
    (release / "libexec").mkdir()
    shutil.copy2(Path(sys.executable).parent / "pos-edge", release / "bin/pos-edge")
    shutil.copy2(UNITS / "pos-edge-kiosk-page", release / "libexec/pos-edge-kiosk-page")
    (root / "usr/bin").mkdir(parents=True)
    for program in ("/usr/bin/cage", "/usr/bin/chromium"):
        if not os.access(program, os.X_OK):
            _missing(f"{program} (Debian's {Path(program).name} package)")
        shutil.copy2(program, root / program.lstrip("/"))
    return root


def test_both_units_verify_without_a_warning(box: Path):
    units = ["/etc/systemd/system/pos-edge.service", "/etc/systemd/system/pos-edge-kiosk.service"]
    done = subprocess.run(
        [systemd_analyze(), "verify", "--man=no", f"--root={box}", *units], capture_output=True, text=True
    )
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_verify_does_fail_when_a_program_the_unit_names_is_missing(box: Path):
    (box / "usr/bin/cage").unlink()
    done = subprocess.run(
        [systemd_analyze(), "verify", "--man=no", f"--root={box}", "/etc/systemd/system/pos-edge-kiosk.service"],
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0 and "/usr/bin/cage" in done.stderr


def test_devices_are_allowed_by_class_so_a_replugged_scanner_is_still_allowed():
    allowed = unit_lines("pos-edge.service", "DeviceAllow")
    assert allowed and all(re.fullmatch(r"char-[A-Za-z0-9_]+ rw", rule) for rule in allowed), allowed
    assert {
        "char-ttyUSB rw",
        "char-ttyACM rw",
        "char-usb_device rw",
        "char-usb rw",
        "char-video4linux rw",
        "char-input rw",
    } <= set(allowed)
    assert unit_lines("pos-edge.service", "DevicePolicy") == ["closed"]
    # The classes' kernel modules load at boot, before the unit resolves the classes to major numbers.
    modules = [
        m for m in (UNITS / "modules-load.d/pos-edge.conf").read_text().splitlines() if m and not m.startswith("#")
    ]
    assert {"usbserial", "cdc_acm", "ch341", "cp210x", "ftdi_sio", "pl2303", "usblp"} == set(modules)


def test_no_secret_is_on_any_command_line_of_the_units():
    for unit in ("pos-edge.service", "pos-edge-kiosk.service"):
        text = (UNITS / unit).read_text()
        commands = re.findall(r"(?m)^Exec\w*=(.*(?:\\\n.*)*)", text)
        assert commands and not [c for c in commands if re.search(r"token|secret|POS_EDGE_\w+__", c, re.I)], commands
    assert unit_lines("pos-edge.service", "EnvironmentFile") == ["/etc/pos-edge/secrets.env"]


# --- the kiosk's start page -------------------------------------------------------------------------------------


def write_page(tmp_path: Path, secrets: str, url: str | None = None) -> tuple[subprocess.CompletedProcess[str], Path]:
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700, exist_ok=True)
    (tmp_path / "secrets.env").write_text(secrets)
    env = {
        "PATH": os.environ["PATH"],
        "RUNTIME_DIRECTORY": str(runtime),
        "POS_EDGE_SECRETS": str(tmp_path / "secrets.env"),
    }
    if url is not None:
        env["POS_EDGE_KIOSK_URL"] = url
    done = subprocess.run([str(UNITS / "pos-edge-kiosk-page")], env=env, capture_output=True, text=True)
    return done, runtime / "start.html"


def test_the_start_page_carries_the_api_token_and_only_its_user_reads_it(tmp_path: Path):
    secrets = f'# central\nPOS_EDGE_CENTRAL__TOKEN=central-secret\nPOS_EDGE_API__TOKEN="{TOKEN}"\nPOS_EDGE_PRIVACY__PHONE_HASH_KEY=phone-secret\n'
    done, page = write_page(tmp_path, secrets, "http://127.0.0.1:9000/kiosk/?final=8")
    assert done.returncode == 0, done.stderr
    assert f'location.replace("http://127.0.0.1:9000/kiosk/?final=8#token={TOKEN}")' in page.read_text()
    assert "central-secret" not in page.read_text() and "phone-secret" not in page.read_text()
    info = page.stat()
    assert stat.S_IMODE(info.st_mode) == 0o600 and (info.st_uid, info.st_gid) == (
        page.parent.stat().st_uid,
        page.parent.stat().st_gid,
    )


@pytest.mark.parametrize(
    ("secrets", "url", "message"),
    [
        ("POS_EDGE_CENTRAL__TOKEN=x\n", None, "no POS_EDGE_API__TOKEN="),
        ('POS_EDGE_API__TOKEN=a"b;alert(1)//\n', None, "may only hold"),
        (f"POS_EDGE_API__TOKEN={TOKEN}\n", 'http://127.0.0.1:8765/kiosk/");alert(1);("', "may not hold"),
        (f"POS_EDGE_API__TOKEN={TOKEN}\n", "javascript:alert(1)", "must be an http(s) URL"),
    ],
)
def test_a_start_page_is_never_written_from_a_token_or_url_that_would_break_out(tmp_path: Path, secrets, url, message):
    done, page = write_page(tmp_path, secrets, url)
    assert done.returncode == 1 and message in done.stderr
    assert not page.exists()


class _Static(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # quiet test output
        pass


@pytest.fixture
def kiosk_site() -> Iterator[str]:
    """The kiosk screen's static files on 127.0.0.1 (the API behind it is not needed to take the token)."""
    handler = partial(_Static, directory=str(REPO / "kiosk_ui" / "static"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/kiosk/"
    server.shutdown()
    server.server_close()


def test_chromium_opens_the_kiosk_screen_from_the_start_page_with_the_token_out_of_sight(
    tmp_path: Path, kiosk_site: str
):
    if not os.access("/usr/bin/chromium", os.X_OK):
        _missing("/usr/bin/chromium (Debian's chromium package)")
    from playwright.sync_api import sync_playwright

    done, page_file = write_page(tmp_path, f"POS_EDGE_API__TOKEN={TOKEN}\n", kiosk_site)
    assert done.returncode == 0, done.stderr
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox", "--disable-gpu", "--no-first-run"]
        )
        try:
            page = browser.new_page()
            page.goto(page_file.as_uri())
            page.wait_for_function(
                "() => sessionStorage.getItem('pos-edge-api-token') !== null && !location.hash.includes('token')"
            )
            assert page.url.startswith(kiosk_site) and TOKEN not in page.url
            assert page.evaluate("sessionStorage.getItem('pos-edge-api-token')") == TOKEN
        finally:
            browser.close()


# --- udev rules -------------------------------------------------------------------------------------------------

RULE_KEY = re.compile(r'(?:[A-Z]+(?:\{[A-Za-z0-9_/]+\})?)(?:==|!=|\+=|=)"[^"]*"')


def assert_udev_syntax(text: str) -> list[str]:
    """Each rule: comma-separated KEY=="value" / KEY+="value" pairs, as udev reads them."""
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    for line in lines:
        assert all(RULE_KEY.fullmatch(part) for part in line.split(", ")), line
    return lines


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def usb_device(sysfs: Path, port: str, vendor: str, product: str, name: str, serial: str | None = None) -> Path:
    device = sysfs / "devices/pci0000:00/0000:00:14.0/usb1" / port
    write(device / "idVendor", vendor)
    write(device / "idProduct", product)
    write(device / "product", name)
    if serial is not None:
        write(device / "serial", serial)
    (device / f"{port}:1.0").mkdir(parents=True)
    return device


def link(path: Path, target: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)


@pytest.fixture
def attached(tmp_path: Path) -> tuple[Path, Path]:
    """A serial scanner with a serial number, two alike HID scanners without one, a camera, a USB printer, the Pi's UART."""
    dev, sysfs = tmp_path / "dev", tmp_path / "sys"
    dev.mkdir()
    scanner = usb_device(sysfs, "1-1", "0c2e", "0B01", "1900G", serial="19012B1234")
    link(sysfs / "class/tty/ttyACM0/device", scanner / "1-1:1.0")
    (dev / "ttyACM0").touch()
    for port, event in (("1-3", "event5"), ("1-4", "event6")):
        wedge = usb_device(sysfs, port, "1eab", "1a03", "NLS-HR22")
        node = wedge / f"{port}:1.0/input/input{event[-1]}"
        write(node / "name", "Newland NLS-HR22 Barcode Scanner")
        write(node / "id/vendor", "1eab")
        write(node / "id/product", "1a03")
        link(sysfs / f"class/input/{event}/device", node)
    camera = usb_device(sysfs, "1-5", "32e4", "9230", "HD USB Camera")
    write(sysfs / "class/video4linux/video0/name", "HD USB Camera")
    write(sysfs / "class/video4linux/video0/index", "0")
    link(sysfs / "class/video4linux/video0/device", camera / "1-5:1.0")
    printer = usb_device(sysfs, "1-2", "04b8", "0202", "TM-T88V", serial='J2"LF*01 23')
    write(printer / "1-2:1.0/bInterfaceClass", "07")
    (printer / "1-2:1.0/usbmisc/lp0").mkdir(parents=True)
    link(sysfs / "bus/usb/devices/1-2:1.0", printer / "1-2:1.0")
    link(sysfs / "class/usbmisc/lp0/device", printer / "1-2:1.0")
    uart = sysfs / "devices/platform/serial0"
    uart.mkdir(parents=True)
    link(sysfs / "class/tty/ttyAMA0/device", uart)
    (dev / "ttyAMA0").touch()
    return dev, sysfs


def test_rules_name_each_attached_device_by_its_ids_with_the_agents_groups(attached):
    dev, sysfs = attached
    text = rules([usb_identity(found, sysfs) for found in discover(dev, sysfs)])
    lines = assert_udev_syntax(text)
    assert lines == [
        'SUBSYSTEM=="tty", ATTRS{idVendor}=="0c2e", ATTRS{idProduct}=="0b01", ATTRS{serial}=="19012B1234", SYMLINK+="pos-scanner-1", GROUP="dialout", MODE="0660"',
        # Two alike scanners without serial numbers: told apart by the USB port each is plugged into.
        'SUBSYSTEM=="input", KERNEL=="event*", ATTRS{idVendor}=="1eab", ATTRS{idProduct}=="1a03", KERNELS=="1-3", SYMLINK+="pos-scanner-2", GROUP="input", MODE="0660"',
        'SUBSYSTEM=="input", KERNEL=="event*", ATTRS{idVendor}=="1eab", ATTRS{idProduct}=="1a03", KERNELS=="1-4", SYMLINK+="pos-scanner-3", GROUP="input", MODE="0660"',
        'SUBSYSTEM=="video4linux", ATTR{index}=="0", ATTRS{idVendor}=="32e4", ATTRS{idProduct}=="9230", SYMLINK+="pos-camera-1", GROUP="video", MODE="0660"',
        # A serial number's quote and glob characters become `?`, which matches any one character.
        'SUBSYSTEM=="usb", ENV{DEVTYPE}=="usb_device", ATTR{idVendor}=="04b8", ATTR{idProduct}=="0202", ATTR{serial}=="J2?LF?01 23", GROUP="lp", MODE="0660"',
        'SUBSYSTEM=="usbmisc", KERNEL=="lp*", ATTRS{idVendor}=="04b8", ATTRS{idProduct}=="0202", ATTRS{serial}=="J2?LF?01 23", SYMLINK+="pos-printer", GROUP="lp", MODE="0660"',
    ]
    # What to put in settings, next to each rule; the UART is left as it is.
    assert "# settings: serial:///dev/pos-scanner-1?baudrate=9600" in text
    assert "# settings: file:///dev/pos-printer" in text and "# settings: camera:///dev/pos-camera-1" in text
    assert "(/dev/ttyAMA0)\n# not a USB device" in text.replace(str(dev), "/dev")


def test_alike_devices_with_no_port_known_are_flagged_not_silently_merged():
    twins = [
        UdevDevice("serial", f"/dev/ttyUSB{n}", f"serial:///dev/ttyUSB{n}?baudrate=9600", "CH340", "1a86", "7523")
        for n in (0, 1)
    ]
    text = rules(twins)
    assert text.count("# WARNING: an alike device has no serial number either") == 2
    assert 'SYMLINK+="pos-scanner-1"' in text and 'SYMLINK+="pos-scanner-2"' in text


def test_the_rules_template_is_valid_once_uncommented():
    template = (UNITS / "udev/70-pos-edge.rules").read_text()
    examples = [line[1:] for line in template.splitlines() if line.startswith("#SUBSYSTEM")]
    assert len(examples) >= 6 and assert_udev_syntax("\n".join(examples))
    assert not assert_udev_syntax(template)  # installed as shipped it changes nothing


def test_pos_edge_devices_udev_prints_rules():
    done = subprocess.run(
        [str(Path(sys.executable).parent / "pos-edge"), "devices", "--udev"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("# /etc/udev/rules.d/70-pos-edge.rules")
    assert_udev_syntax(done.stdout)
