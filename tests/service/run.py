"""`make service-check`: the agent as a store runs it, under systemd, proven on this machine in a few minutes.

PID 1 here need not be systemd: the check boots this machine's own Debian (its systemd as PID 1) in a throw-away
container — `systemd-nspawn --boot` on an overlay of `/` whose writes go to a temporary folder (container.py) —
and then, inside it, as a store's IT person would:

  1. boots the container, and starts the demo central service and the WeChat Pay simulator in it (as units);
  2. installs the agent with systemd/install.sh, offline, from a wheel folder made from .venv (wheelhouse.py),
     with simulated devices (sim://) and the demo's public secrets;
  3. checks the unit is active with the agent's status line (READY=1 reached), and times a start to READY;
  4. sells through the local API: cash, and a WeChat Pay code payment through central; both journaled;
  5. `kill -9`s the agent: systemd restarts it, the sales are still in the journal, `pos-edge journal verify`;
  6. `kill -STOP`s it: the watchdog (WatchdogSec=30s) kills it ("Watchdog timeout", Result=watchdog) and
     systemd restarts it;
  7. cuts the power: every process of the container SIGKILLed right after a sale was answered "closed", then
     boots it again: the agent starts at boot, the sale is in the journal, the chain verifies, the previous
     boot's systemd journal is kept, and `pos-edge doctor` passes;
  8. prints `systemd-analyze security pos-edge.service` of the running unit;
  9. takes everything down: container, overlay, temporary files — also when a step failed.

One line per step (ok or FAIL, and its figure); exit 1 on any FAIL, with the agent's last log lines. What a
container cannot show: a power cut here kills processes, it does not drop the disk's write cache (SQLite's
synchronous=FULL fsyncs are what cover that; see docs/RELIABILITY.md).

Run as root: `make service-check` (installs systemd-container when missing), or `.venv/bin/python -m tests.service`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.service import wheelhouse
from tests.service.container import Container, ContainerError, preflight

REPO = Path(__file__).resolve().parents[2]
WHEELS_INSIDE = "/srv/pos-edge-wheels"
API_TOKEN = "demo-api-token"
# The public demo secrets of `make demo` (Makefile, DEMO_ENV): central's seed-demo creates this store token.
SECRETS = {
    "POS_EDGE_CENTRAL__TOKEN": "demo-store-token",
    "POS_EDGE_API__TOKEN": API_TOKEN,
    "POS_EDGE_PRIVACY__PHONE_HASH_KEY": "demo-phone-hash-key-not-secret",
}
CENTRAL_CONFIG = "/etc/pos-central-demo/central.toml"
PAID = {"paid", "closed"}
# From the demo catalog (config/demo.toml).
BASKETS = {
    "cash": {"sku": "6901234567892", "name": "矿泉水 550ml", "qty": 1, "unit_price_fen": 200},
    "wechat": {"sku": "6920000000012", "name": "鲜牛奶 1L", "qty": 2, "unit_price_fen": 1290},
}
# As the agent's user (root would leave root-owned -wal/-shm files the agent then cannot open), with the service's
# environment.
AS_AGENT = "set -a && . /etc/pos-edge/secrets.env && exec runuser -u pos-edge -- pos-edge"
MAX_EXPOSURE = 2.5  # the bar for pos-edge.service
# After a power cut these are what a person is asked to look at, not faults: a receipt cut off mid-print
# (held as uncertain, never printed twice) and sales not yet pushed to central.
EXPECTED_DOCTOR_WARNINGS = {"print queue", "outbox"}


class StepFailed(Exception):
    """A check did not hold; the message is the figure that says so."""


class Interrupted(BaseException):
    """SIGTERM (make interrupted, a CI timeout): the run stops, and still takes the container down."""


def _interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


@dataclass
class Sale:
    kind: str
    transaction_id: str
    total_fen: int
    seconds: float
    answered_at: float


@dataclass
class Run:
    container: Container
    wheel: str = ""
    sales: list[Sale] = field(default_factory=list)
    auth_codes: list[str] = field(default_factory=list)


# --- helpers -----------------------------------------------------------------------------------------------------


def yuan(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"


def agent(run: Run, *properties: str) -> dict[str, str]:
    return run.container.unit("pos-edge.service", *properties)


def wait_active_again(run: Run, old_pid: str, restarts: int, within: float) -> dict[str, str]:
    """Polls until systemd has restarted the agent (a new main PID, NRestarts = `restarts`) and it is active."""
    deadline = time.monotonic() + within
    while True:
        shown = agent(run, "ActiveState", "SubState", "MainPID", "NRestarts", "ActiveEnterTimestampMonotonic", "Result")
        if (
            shown["ActiveState"] == "active"
            and shown["MainPID"] not in ("0", old_pid)
            and int(shown["NRestarts"]) >= restarts
        ):
            return shown
        if time.monotonic() > deadline:
            raise StepFailed(f"not active again within {within:.0f} s: {shown}")
        time.sleep(0.1)


def since(timestamp_us: str, start: float) -> float:
    """Seconds from `start` (this host's monotonic clock) to a systemd or journal monotonic timestamp: one clock,
    since a container has no time namespace of its own."""
    return int(timestamp_us) / 1e6 - start


def message(entry: dict) -> str:
    text = entry.get("MESSAGE", "")
    return bytes(text).decode(errors="replace") if isinstance(text, list) else str(text)


def sell(run: Run, kind: str) -> Sale:
    """One sale through the local API, as the POS software makes it; told paid only with a transaction id."""
    c = run.container
    started = time.monotonic()
    opened = c.http("POST", "/v1/sessions", {}, token=API_TOKEN)
    if opened.status != 201:
        raise StepFailed(f"{kind} sale: opening a session answered {opened.status} {opened.body}")
    session = opened.body["id"]
    basket = c.http("PUT", f"/v1/sessions/{session}/basket", {"lines": [BASKETS[kind]]}, token=API_TOKEN)
    if basket.status != 200:
        raise StepFailed(f"{kind} sale: the basket answered {basket.status} {basket.body}")
    due = basket.body["remaining_fen"]
    if kind == "wechat":
        # The simulator's scenario is the code's last two digits: 00 pays at once.
        run.auth_codes.append(f"13456701{len(run.auth_codes) + 1:08d}00")
        tender = {"kind": "code", "auth_code": run.auth_codes[-1]}
    else:
        tender = {"kind": "cash", "tendered_fen": (due + 999) // 1000 * 1000}
    paid = c.http("POST", f"/v1/sessions/{session}/tenders", tender, token=API_TOKEN)
    answered = time.monotonic()
    body = paid.body if isinstance(paid.body, dict) else {}
    if paid.status != 200 or body.get("state") not in PAID or not body.get("transaction_id"):
        raise StepFailed(
            f"{kind} sale: the tender answered {paid.status}, state {body.get('state')}: {str(paid.body)[:300]}"
        )
    return Sale(kind, body["transaction_id"], due, answered - started, answered)


def check_journaled(run: Run, sales: list[Sale]) -> set[str]:
    """Each sale is in the agent's journal with its total; the business days they belong to."""
    days = set()
    for sale in sales:
        found = run.container.http("GET", f"/v1/transactions/{sale.transaction_id}", token=API_TOKEN)
        if found.status != 200 or found.body.get("total_fen") != sale.total_fen:
            raise StepFailed(
                f"the {sale.kind} sale {sale.transaction_id} is not in the journal: {found.status} {str(found.body)[:200]}"
            )
        days.add(found.body["business_day"])
    return days


def journal_verify(run: Run) -> str:
    """`pos-edge journal verify`: its one-line answer."""
    done = run.container.run("sh", "-c", f"{AS_AGENT} journal verify --config /etc/pos-edge/agent.toml", check=False)
    if done.returncode != 0:
        raise StepFailed(f"pos-edge journal verify exited {done.returncode}: {(done.stderr or done.stdout).strip()}")
    return done.stdout.strip()


# --- the steps ---------------------------------------------------------------------------------------------------


def prepare(c: Container, python_bin: Path) -> None:
    """The box before its first boot: the agent's settings and secrets as a store writes them (install.sh keeps
    them and fixes their owner and modes), and the demo central service and simulator as units."""
    settings = (REPO / "config/demo.toml").read_text()
    settings, replaced = re.subn(r'(?m)^database = ".*"$', 'database = "/var/lib/pos-edge/agent.db"', settings)
    if replaced != 1:
        raise StepFailed("config/demo.toml has no single [storage] database line to point at /var/lib/pos-edge")
    c.path("/etc/pos-edge").mkdir(parents=True)
    c.path("/etc/pos-edge/agent.toml").write_text(settings)
    secrets = c.path("/etc/pos-edge/secrets.env")
    secrets.touch(mode=0o600)
    secrets.write_text("".join(f"{k}={v}\n" for k, v in SECRETS.items()))

    central = (REPO / "config/central-demo.toml").read_text()
    central, replaced = re.subn(
        r'(?m)^database_url = ".*"$', 'database_url = "sqlite:////var/lib/pos-central-demo/central.db"', central
    )
    if replaced != 1:
        raise StepFailed("config/central-demo.toml has no single database_url line")
    c.path(CENTRAL_CONFIG).parent.mkdir(parents=True)
    c.path(CENTRAL_CONFIG).write_text(central)
    # The demo's public WeChat Pay v3 keys, where its settings name them (relative to the settings file).
    keys = c.path(CENTRAL_CONFIG).parent / "demo-keys"
    keys.mkdir()
    for key in (REPO / "config/demo-keys").glob("*.pem"):
        (keys / key.name).write_bytes(key.read_bytes())
    c.path("/var/lib/pos-central-demo").mkdir(parents=True)
    for unit, what, command in (
        ("pos-central-demo.service", "Demo central service", "serve"),
        ("pos-central-wechat-sim.service", "WeChat Pay simulator", "simulate wechat"),
    ):
        c.path(f"/etc/systemd/system/{unit}").write_text(
            f"[Unit]\nDescription={what} (make service-check)\n\n"
            f"[Service]\nExecStart={python_bin}/pos-central {command} --config {CENTRAL_CONFIG}\n\n"
            "[Install]\nWantedBy=multi-user.target\n"
        )
    # This machine's PostgreSQL (for central's tests) has no business in the box: masked, it does not start there.
    masked = c.path("/etc/systemd/system/postgresql.service")
    masked.unlink(missing_ok=True)
    masked.symlink_to("/dev/null")


def step_boot(run: Run) -> str:
    c = run.container
    c.mount()
    prepare(c, Path(sys.prefix) / "bin")
    seconds = c.boot()
    state = c.run("systemctl", "is-system-running", check=False).stdout.strip()
    failed = c.run("systemctl", "list-units", "--failed", "--plain", "--no-legend", check=False).stdout.split()
    return f"overlay of / booted by systemd-nspawn: {state} in {seconds:.1f} s" + (
        f" (failed units: {' '.join(failed[::4])})" if failed else ""
    )


def step_central(run: Run) -> str:
    c = run.container
    python_bin = Path(sys.prefix) / "bin"
    seeded = c.run(f"{python_bin}/pos-central", "seed-demo", "--config", CENTRAL_CONFIG, timeout=120).stdout.strip()
    c.run("systemctl", "daemon-reload")
    c.run("systemctl", "enable", "--now", "pos-central-demo.service", "pos-central-wechat-sim.service")
    deadline = time.monotonic() + 30
    while True:
        try:
            if (
                c.http("GET", "/healthz", port=8800, timeout=2).status == 200
                and c.http("GET", "/", port=8801, timeout=2).status
            ):
                return f"demo central (127.0.0.1:8800) and WeChat Pay simulator (8801) up as units; {seeded}"
        except ContainerError:
            pass
        if time.monotonic() > deadline:
            raise StepFailed("central or the WeChat Pay simulator did not answer within 30 s")
        time.sleep(0.3)


def step_wheels(run: Run) -> str:
    started = time.monotonic()
    wheels = run.container.work / "wheels"
    try:
        agent_wheel, others = wheelhouse.build(REPO, wheels)
    except subprocess.CalledProcessError as exc:
        raise StepFailed(f"{' '.join(exc.cmd[:6])}... exited {exc.returncode}: {(exc.stderr or '')[-800:]}") from exc
    run.wheel = agent_wheel.name
    return f"{agent_wheel.name} and {others} dependency wheels packed from {sys.prefix} in {time.monotonic() - started:.1f} s"


def step_install(run: Run) -> str:
    c = run.container
    started = time.monotonic()
    done = c.run(
        f"{REPO}/systemd/install.sh", "--source", f"{WHEELS_INSIDE}/{run.wheel}",
        env={"POS_EDGE_PIP_ARGS": f"--no-index --find-links {WHEELS_INSIDE}", "PIP_CONFIG_FILE": "/dev/null"},
        check=False, timeout=300,
    )  # fmt: skip
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise StepFailed(
            f"install.sh exited {done.returncode} after {seconds:.0f} s: {(done.stderr or done.stdout).strip()[-1500:]}"
        )
    release = re.search(r"current release: (\S+)", done.stdout)
    enabled = c.run("systemctl", "is-enabled", "pos-edge.service", check=False).stdout.strip()
    active = c.run("systemctl", "is-active", "pos-edge.service", check=False).stdout.strip()
    if enabled != "enabled" or active != "active":
        raise StepFailed(f"after install.sh pos-edge.service is {enabled} and {active}")
    return f"systemd/install.sh from the checkout, offline: {seconds:.1f} s, release {release.group(1) if release else '?'}, pos-edge.service {enabled} and {active}"


def step_ready(run: Run) -> str:
    c = run.container
    shown = agent(run, "ActiveState", "SubState", "StatusText", "Type", "WatchdogUSec")
    if (shown["ActiveState"], shown["SubState"]) != ("active", "running") or not shown["StatusText"]:
        raise StepFailed(f"after install: {shown}")
    started = time.monotonic()
    c.run("systemctl", "stop", "pos-edge.service", timeout=60)
    stopped = time.monotonic()
    # Type=notify: `systemctl start` returns once the agent sent READY=1.
    c.run("systemctl", "start", "pos-edge.service", timeout=120)
    returned = time.monotonic()
    shown = agent(
        run, "ActiveState", "SubState", "StatusText", "InactiveExitTimestampMonotonic", "ActiveEnterTimestampMonotonic"
    )
    if shown["ActiveState"] != "active" or not shown["StatusText"]:
        raise StepFailed(f"after systemctl start: {shown}")
    ready = (int(shown["ActiveEnterTimestampMonotonic"]) - int(shown["InactiveExitTimestampMonotonic"])) / 1e6
    return (f"active/running, status \"{shown['StatusText']}\"; start to READY=1 {ready:.2f} s "
            f"(systemctl start returned in {returned - stopped:.2f} s); a clean stop took {stopped - started:.2f} s")  # fmt: skip


def step_sales(run: Run) -> str:
    cash = sell(run, "cash")
    wechat = sell(run, "wechat")
    check_journaled(run, [cash, wechat])
    run.sales += [cash, wechat]
    return f"cash {yuan(cash.total_fen)} ({cash.seconds:.2f} s) and WeChat Pay {yuan(wechat.total_fen)} ({wechat.seconds:.2f} s) closed and journaled"


def step_kill9(run: Run) -> str:
    c = run.container
    before = agent(run, "MainPID", "NRestarts")
    killed = time.monotonic()
    c.run("kill", "-KILL", before["MainPID"])
    after = wait_active_again(run, before["MainPID"], int(before["NRestarts"]) + 1, within=60)
    back = since(after["ActiveEnterTimestampMonotonic"], killed)
    if not any("status=9/KILL" in message(e) for e in c.journal("--unit=pos-edge.service", since=killed)):
        raise StepFailed("the journal does not show the main process killed by SIGKILL")
    check_journaled(run, run.sales)
    verified = journal_verify(run)
    return (f"main PID {before['MainPID']} killed: restarted by systemd (NRestarts {before['NRestarts']}→{after['NRestarts']}), "
            f"active again {back:.1f} s later (RestartSec=3s); {len(run.sales)} sales still journaled, {verified}")  # fmt: skip


def step_watchdog(run: Run) -> str:
    c = run.container
    before = agent(run, "MainPID", "NRestarts", "WatchdogUSec")
    stopped = time.monotonic()
    c.run("kill", "-STOP", before["MainPID"])
    after = wait_active_again(run, before["MainPID"], int(before["NRestarts"]) + 1, within=90)
    entries = c.journal("--unit=pos-edge.service", since=stopped)
    timeout = next((e for e in entries if "Watchdog timeout" in message(e)), None)
    result = [e.get("UNIT_RESULT") for e in entries if e.get("UNIT_RESULT")]
    if timeout is None or "watchdog" not in result:
        said = [message(e) for e in entries if message(e).startswith("pos-edge.service: ")]
        raise StepFailed(
            f'no "Watchdog timeout" with Result=watchdog in the journal (results: {result}): ' + " | ".join(said)
        )
    fired = since(timeout["__MONOTONIC_TIMESTAMP"], stopped)
    back = since(after["ActiveEnterTimestampMonotonic"], stopped) - fired
    check_journaled(run, run.sales)
    return (f"main PID {before['MainPID']} stopped: \"Watchdog timeout\" {fired:.1f} s later (WatchdogSec={before['WatchdogUSec']}), "
            f"Result=watchdog, restarted (NRestarts {before['NRestarts']}→{after['NRestarts']}) and active {back:.1f} s after the timeout")  # fmt: skip


def step_power_cut(run: Run) -> str:
    c = run.container
    sale = sell(run, "wechat")
    run.sales.append(sale)
    cut = c.power_cut()
    booted = c.boot()
    spawned = c.spawned_at
    shown = agent(
        run, "ActiveState", "SubState", "UnitFileState", "NRestarts", "ActiveEnterTimestampMonotonic", "StatusText"
    )
    if shown["ActiveState"] != "active" or shown["UnitFileState"] != "enabled":
        raise StepFailed(f"after the power cut and a boot: {shown}")
    to_active = since(shown["ActiveEnterTimestampMonotonic"], spawned)
    return (f"every process killed {1000 * (cut - sale.answered_at):.2f} ms after a WeChat Pay sale of {yuan(sale.total_fen)} answered closed; "
            f"booted again in {booted:.1f} s, pos-edge.service started by the boot ({shown['UnitFileState']}), "
            f"active {to_active:.1f} s after the container started, NRestarts={shown['NRestarts']}")  # fmt: skip


def step_after_cut(run: Run) -> str:
    c = run.container
    days = check_journaled(run, run.sales)
    verified = journal_verify(run)
    boots = [
        line
        for line in c.run("journalctl", "--list-boots", "--no-pager", "--quiet").stdout.splitlines()
        if line.strip()
    ]
    previous = [message(e) for e in c.journal("--boot=-1", "--unit=pos-edge.service")]
    kept = [what for what in ("status=9/KILL", "Watchdog timeout") if any(what in m for m in previous)]
    if len(boots) < 2 or len(kept) < 2:
        raise StepFailed(
            f"the systemd journal of the boot before the cut is not whole: {len(boots)} boot(s), found {kept}"
        )
    return (f"all {len(run.sales)} sales in the agent's journal, {verified}; the systemd journal kept the boot "
            f"before the cut ({', '.join(kept)}); {reconcile(run, days)}")  # fmt: skip


def reconcile(run: Run, days: set[str]) -> str:
    """Central agrees in the end: `pos-edge reconcile` of each business day, once the outbox has drained (a sale
    the cut left unsent is pushed after the boot)."""
    c = run.container
    deadline = time.monotonic() + 30
    while (status := c.http("GET", "/v1/status", token=API_TOKEN).body["database"])["outbox_pending"]:
        if time.monotonic() > deadline:
            raise StepFailed(f"the outbox did not drain to central within 30 s: {status}")
        time.sleep(0.2)
    said = []
    for day in sorted(days):
        done = c.run("sh", "-c", f"{AS_AGENT} reconcile --day {day} --config /etc/pos-edge/agent.toml", check=False)
        if done.returncode != 0 or "MATCHED" not in done.stdout:
            raise StepFailed(
                f"pos-edge reconcile --day {day} exited {done.returncode}: {(done.stdout + done.stderr).strip()}"
            )
        said.append(done.stdout.strip().splitlines()[0])
    return "; ".join(said)


def step_doctor(run: Run) -> str:
    done = run.container.run("pos-edge", "doctor", "--json", check=False, timeout=60)
    try:
        checks = json.loads(done.stdout)
    except ValueError as exc:
        raise StepFailed(
            f"pos-edge doctor exited {done.returncode} without JSON: {(done.stderr or done.stdout).strip()[-500:]}"
        ) from exc
    count = {s: sum(1 for c in checks if c["status"] == s) for s in ("ok", "warn", "fail", "skip")}
    failed = [f"{c['name']}: {c['detail']}" for c in checks if c["status"] == "fail"]
    warned = [f"{c['name']}: {c['detail']}" for c in checks if c["status"] == "warn"]
    unexpected = [c["name"] for c in checks if c["status"] == "warn" and c["name"] not in EXPECTED_DOCTOR_WARNINGS]
    if done.returncode != 0 or failed or unexpected:
        raise StepFailed(f"pos-edge doctor exited {done.returncode}: failed {failed}, warnings {warned}")
    others = ", ".join(f"{n} {s}" for s, n in count.items() if s != "ok" and n)
    return f"pos-edge doctor after the cut exited 0: {count['ok']} checks ok{', ' + others if others else ''}" + (
        f" ({'; '.join(warned)})" if warned else ""
    )


def step_logs(run: Run) -> str:
    """No auth code, token or key in any line the agent logged under systemd, in either boot."""
    logged = run.container.run("journalctl", "--unit=pos-edge.service", "--output=cat", "--no-pager").stdout
    secrets = {**SECRETS, **{f"auth code {code}": code for code in run.auth_codes}}
    leaked = [name for name, value in secrets.items() if value in logged]
    if leaked:
        raise StepFailed(f"the agent's log holds {', '.join(leaked)}")
    return f"{len(logged.splitlines())} lines the agent logged (both boots) hold none of the {len(secrets)} secrets and auth codes used"


def step_security(run: Run) -> str:
    done = run.container.run("systemd-analyze", "security", "pos-edge.service", "--no-pager", check=False)
    found = re.search(r"Overall exposure level for pos-edge\.service: ([\d.]+) (\S+)", done.stdout)
    if not found:
        raise StepFailed(f"systemd-analyze security printed no exposure: {(done.stderr or done.stdout).strip()[-300:]}")
    exposure = float(found.group(1))
    if exposure > MAX_EXPOSURE:
        raise StepFailed(f"exposure {exposure} {found.group(2)} is above {MAX_EXPOSURE}")
    return f"systemd-analyze security pos-edge.service (the running unit): exposure {exposure} {found.group(2)}"


STEPS: list[tuple[str, str, Callable[[Run], str]]] = [
    ("1", "boot", step_boot),
    ("1", "central", step_central),
    ("2", "wheels", step_wheels),
    ("2", "install", step_install),
    ("3", "ready", step_ready),
    ("4", "sale", step_sales),
    ("5", "kill -9", step_kill9),
    ("6", "watchdog", step_watchdog),
    ("7", "power cut", step_power_cut),
    ("7", "journal", step_after_cut),
    ("7", "doctor", step_doctor),
    ("8", "logs", step_logs),
    ("8", "security", step_security),
]


def line(ok: bool | None, number: str, name: str, figure: str) -> None:
    mark = {True: "ok", False: "FAIL", None: "-"}[ok]
    print(f"{mark:<5}{number} {name:<10} {figure}", flush=True)


def size_of(folder: Path) -> int:
    total = 0
    for base, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(base, name)).st_size
            except OSError:
                pass
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make service-check", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("/var/tmp"),
        help="where the temporary folder goes (a file system overlayfs accepts as upper)",
    )
    options = parser.parse_args(argv)
    began = time.monotonic()
    print(
        "service check: the agent under systemd, in a throw-away container (systemd-nspawn --boot on an overlay of /)",
        flush=True,
    )
    missing = preflight()
    if missing:
        for reason in missing:
            line(False, "0", "preflight", reason)
        return 1
    signal.signal(signal.SIGTERM, _interrupted)
    work = Path(tempfile.mkdtemp(prefix="pos-edge-service-check-", dir=options.workdir))
    (work / "wheels").mkdir()
    container = Container(work, f"pos-edge-check-{os.getpid()}", {work / "wheels": WHEELS_INSIDE, REPO: str(REPO)})
    run = Run(container)
    failures = 0
    try:
        for index, (number, name, step) in enumerate(STEPS):
            try:
                figure = step(run)
            except (
                StepFailed,
                ContainerError,
                subprocess.TimeoutExpired,
                OSError,
                KeyboardInterrupt,
                Interrupted,
            ) as exc:
                failures += 1
                interrupted = isinstance(exc, (KeyboardInterrupt, Interrupted))
                line(False, number, name, f"interrupted ({exc or 'SIGINT'})" if interrupted else str(exc))
                if not interrupted:
                    print_agent_log(container)
                # Each step stands on the ones before it.
                rest = ", ".join(f"{n} {s}" for n, s, _ in STEPS[index + 1 :])
                if rest:
                    line(None, "", "not run", rest)
                break
            line(True, number, name, figure)
    finally:
        written = size_of(work / "upper") + size_of(work / "wheels")
        problems = container.close()
        if problems:
            failures += 1
            line(False, "9", "cleanup", "; ".join(problems))
        else:
            line(
                True,
                "9",
                "cleanup",
                f"container stopped, overlay unmounted, {written / 1e6:.0f} MB of temporary files removed",
            )
    total = time.monotonic() - began
    print(f"{'FAILED' if failures else 'all checks passed'} in {int(total // 60)} min {total % 60:.0f} s", flush=True)
    return 1 if failures else 0


def print_agent_log(container: Container) -> None:
    """The agent's last log lines, to see why a step failed."""
    try:
        shown = container.run(
            "journalctl", "--unit=pos-edge.service", "--lines=15", "--no-pager", "--quiet", check=False, timeout=10
        ).stdout
    except (ContainerError, subprocess.TimeoutExpired, OSError):
        return
    for text in shown.splitlines():
        print(f"      | {text}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
