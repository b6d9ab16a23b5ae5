"""`pos-edge doctor`: what is wrong with this till, one line per check, each failure with what to do.

Checks run in the order a person would look: the settings, the running service, the database, the disk, the
devices, central and the clock. Each is independent — a missing printer does not hide a broken journal — and
none changes anything: the database is opened without migrating, devices the running agent holds are asked
about through its API rather than opened a second time.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Literal

import httpx
import sqlalchemy as sa

from agent.disk_space import MB, DiskSpace
from agent.settings import Settings, SettingsError, load_settings

Status = Literal["ok", "warn", "fail", "skip"]

SERVICE = "pos-edge.service"
SERVICE_USER = "pos-edge"
# The unit's SupplementaryGroups=: the groups the service has whatever /etc/group says (systemd/pos-edge.service).
SERVICE_GROUPS = ("dialout", "lp", "video", "input")
# Clock skew beyond this is worth a warning; beyond member_codes.clock_skew_s, member codes start being refused.
SKEW_WARN_S = 5


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status.upper() if self.status != 'ok' else 'ok':<5} {self.name:<18} {self.detail}"
        return f"{text}\n{'':24}→ {self.fix}" if self.fix and self.status in ("warn", "fail") else text

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class Doctor:
    """The checks, with their seams: the clock (for skew), how to run systemctl, which user the service runs as."""

    config_path: Path
    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    systemctl: Callable[[list[str]], subprocess.CompletedProcess] | None = None
    service_user: str = SERVICE_USER

    def run(self) -> list[Check]:
        try:
            loaded = load_settings(self.config_path)
        except SettingsError as exc:
            return [
                Check(
                    "settings",
                    "fail",
                    str(exc).replace("\n", "; "),
                    "fix the keys named, then: pos-edge config check FILE",
                )
            ]
        settings = loaded.settings
        checks = [
            Check(
                "settings",
                "ok",
                f"{self.config_path}: store {settings.store.id}, {settings.station.kind} {settings.station.id}",
            )
        ]
        checks += [Check("settings", "warn", warning, "see config/example.toml") for warning in loaded.warnings]
        agent = self._agent(settings)
        for part in (
            self._service,
            lambda s: self._api(s, agent),
            self._database,
            self._disk,
            lambda s: self._devices(s, agent),
            self._central,
        ):
            try:
                checks += list(part(settings))
            except Exception as exc:  # a check that breaks is itself a finding, never a traceback
                checks.append(
                    Check(
                        getattr(part, "__name__", "check").strip("_"),
                        "fail",
                        f"the check failed: {type(exc).__name__}: {exc}",
                    )
                )
        return checks

    # --- the service -------------------------------------------------------------------------------------------

    def _service(self, settings: Settings) -> Iterator[Check]:
        run = self.systemctl or _systemctl
        if not _under_systemd():
            yield Check("service", "skip", "not running under systemd")
            return
        shown = run(["show", SERVICE, "-p", "LoadState,ActiveState,SubState,NRestarts,Result,UnitFileState,StatusText"])
        props = dict(line.split("=", 1) for line in shown.stdout.splitlines() if "=" in line)
        if props.get("LoadState") != "loaded":
            yield Check("service", "fail", f"{SERVICE} is not installed", "run systemd/install.sh (docs/OPERATIONS.md)")
            return
        state = f"{props.get('ActiveState')}/{props.get('SubState')}"
        if props.get("ActiveState") != "active":
            yield Check(
                "service",
                "fail",
                f"{SERVICE} is {state} (last result: {props.get('Result')})",
                f"journalctl -u {SERVICE} -n 50; then systemctl restart {SERVICE}",
            )
        else:
            yield Check("service", "ok", f"{SERVICE} {state}, {props.get('StatusText') or 'no status yet'}")
        if props.get("UnitFileState") not in ("enabled", "enabled-runtime", None):
            yield Check(
                "service",
                "warn",
                f"{SERVICE} does not start at boot ({props.get('UnitFileState')})",
                f"systemctl enable {SERVICE}",
            )
        restarts = int(props.get("NRestarts") or 0)
        if restarts:
            yield Check(
                "service",
                "warn",
                f"restarted {restarts} time(s) since it was started (a crash or a watchdog timeout)",
                f"journalctl -u {SERVICE} -p warning",
            )

    def _agent(self, settings: Settings) -> httpx.Client | None:
        """A client on the running agent's API, or None when nothing answers there."""
        client = httpx.Client(
            base_url=f"http://{_connect_host(settings.api.host)}:{settings.api.port}",
            headers={"Authorization": f"Bearer {settings.api.token.get_secret_value()}"},
            timeout=3,
        )
        try:
            client.get("/healthz").raise_for_status()
        except httpx.HTTPError:
            client.close()
            return None
        return client

    def _api(self, settings: Settings, agent: httpx.Client | None) -> Iterator[Check]:
        if agent is None:
            yield Check(
                "agent",
                "warn",
                f"nothing answers on {settings.api.host}:{settings.api.port}",
                f"systemctl start {SERVICE} (or pos-edge run)",
            )
            return
        ready = agent.get("/readyz")
        if ready.status_code == 404:  # an agent from before /readyz
            yield Check("agent", "ok", "answers")
        elif ready.status_code == 200:
            yield Check("agent", "ok", "answers and is ready to sell")
        else:
            parts = ready.json().get("parts") or []
            failing = [f"{p['name']} {p['state']}" for p in parts if p.get("needed_to_sell") and not p.get("ok")]
            yield Check(
                "agent",
                "fail",
                f"answers but cannot sell: {', '.join(failing) or ready.text[:200]}",
                "see the checks below and GET /readyz",
            )

    # --- the database ------------------------------------------------------------------------------------------

    def _database(self, settings: Settings) -> Iterator[Check]:
        from agent.db import create_engine

        path = settings.storage.database
        if not path.exists():
            yield Check(
                "database",
                "fail",
                f"{path} does not exist",
                "start the agent once to create it, or restore a backup: pos-edge restore FILE",
            )
            return
        yield from self._openable(path, "database", need_write=True)
        engine = create_engine(path)
        try:
            yield from self._database_content(path, engine)
        except sa.exc.DatabaseError as exc:
            yield Check(
                "database",
                "fail",
                f"{path} is damaged: {exc.orig}",
                "stop the agent and restore the latest backup: pos-edge restore FILE",
            )
        finally:
            engine.dispose()

    def _database_content(self, path: Path, engine: sa.Engine) -> Iterator[Check]:
        from agent.db import head_revision, reader
        from agent.journal import read_outbox, verify
        from agent.print_queue import PrintJobStore

        with reader(engine) as connection:  # a live till's writers are never held up by a check
            quick = connection.exec_driver_sql("PRAGMA quick_check").scalar()
            full = [row[0] for row in connection.exec_driver_sql("PRAGMA integrity_check").all()]
            revision = connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
            outbox = read_outbox(connection)
        uncertain = PrintJobStore(engine).uncertain_count()
        size = path.stat().st_size + _size(path.with_name(path.name + "-wal"))
        if quick != "ok" or full != ["ok"]:
            yield Check(
                "database",
                "fail",
                f"integrity check: {'; '.join(full[:3])}",
                "stop the agent and restore the latest backup: pos-edge restore FILE",
            )
            return
        yield Check("database", "ok", f"integrity ok, {size / 1e6:.1f} MB")
        head = head_revision()
        if revision != head:
            yield Check(
                "migrations",
                "warn",
                f"schema {revision}, this release's is {head}",
                f"restart the agent to upgrade: systemctl restart {SERVICE}",
            )
        else:
            yield Check("migrations", "ok", f"schema {revision} is current")
        report = verify(engine)
        if report.first_break is not None:
            link = report.first_break
            yield Check(
                "journal",
                "fail",
                f"hash chain broken at seq {link.seq}: {link.reason}",
                "keep this database for investigation; restore the latest backup that verifies",
            )
        else:
            purged = (
                f", {report.purged} older rows purged after central confirmed them"
                if getattr(report, "purged", 0)
                else ""
            )
            yield Check(
                "journal", "ok", f"hash chain verifies: {report.rows} rows, {report.stations} station(s){purged}"
            )
        if outbox.rejected:
            yield Check(
                "outbox",
                "fail",
                f"{outbox.rejected} transaction(s) refused by central",
                "GET /v1/sync lists them; they need a person at central",
            )
        elif outbox.oldest_pending_at and (self.now() - outbox.oldest_pending_at).total_seconds() > 3600:
            yield Check(
                "outbox",
                "warn",
                f"{outbox.pending} transaction(s) waiting, the oldest since {outbox.oldest_pending_at:%Y-%m-%d %H:%M:%S} UTC",
                "check central below; the till keeps selling meanwhile",
            )
        else:
            yield Check("outbox", "ok", f"{outbox.pending} waiting")
        if uncertain:
            yield Check(
                "print queue",
                "warn",
                f"{uncertain} receipt(s) may or may not have printed",
                "the till screen's printer panel: reprint or mark printed",
            )

    def _disk(self, settings: Settings) -> Iterator[Check]:
        folder = settings.storage.database.parent
        if not folder.is_dir():
            yield Check("disk", "fail", f"{folder} does not exist", f"create it, owned by {self.service_user}")
            return
        usage = shutil.disk_usage(folder)
        space = DiskSpace(folder, settings.storage.min_free_mb * MB).check()
        need = space.min_free_bytes
        detail = f"{space.free_bytes / 1e9:.1f} GB free of {usage.total / 1e9:.1f} GB under {folder}"
        if not space.ok:
            yield Check(
                "disk",
                "fail",
                f"{detail}; new sales are refused below {need // MB} MB",
                "free space: old backups, logs (journalctl --vacuum-size=200M)",
            )
        elif space.free_bytes < 4 * need:
            yield Check("disk", "warn", detail, "free space before sales are refused")
        else:
            yield Check("disk", "ok", detail)

    # --- devices -----------------------------------------------------------------------------------------------

    def _devices(self, settings: Settings, agent: httpx.Client | None) -> Iterator[Check]:
        from drivers.urls import parse_device_url

        configured = [(s.id, s.url, "scanner") for s in settings.devices.scanners]
        if settings.devices.camera:
            configured.append((settings.devices.camera.id, settings.devices.camera.url, "camera"))
        if settings.devices.printer:
            configured.append((settings.devices.printer.id, settings.devices.printer.url, "printer"))
        if not configured:
            yield Check(
                "devices", "warn", "no scanner, camera or printer configured", "pos-edge devices lists what is attached"
            )
            return
        live = self._live_devices(agent)
        for device_id, text, kind in configured:
            url = parse_device_url(text)
            name = f"{kind} {device_id}"
            if url.scheme == "sim":
                yield Check(name, "ok", f"{text} (simulated)")
                continue
            node = _device_node(url)
            if node is not None:
                if not node.exists():
                    yield Check(
                        name,
                        "fail",
                        f"{node} is not there",
                        "plug it in; pos-edge devices shows what is attached and its URL",
                    )
                    continue
                problem = next(
                    (c for c in self._openable(node, name, need_write=kind == "printer") if c.status != "ok"), None
                )
                if problem:
                    yield problem
                    continue
            if device_id in live:
                state, reason = live[device_id]
                good = state in ("connected", "ready", "printing", "idle")
                fix = (
                    "load paper and close the cover"
                    if "paper" in state
                    else f"check its cable and power; journalctl -u {SERVICE} -g {device_id}"
                )
                yield Check(
                    name,
                    "ok" if good else "fail",
                    f"{text}: {state}{f' ({reason})' if reason else ''}",
                    "" if good else fix,
                )
            elif kind == "printer" and agent is None:
                yield self._printer_status(settings, name)
            else:
                yield Check(name, "ok", f"{text}: present")

    def _live_devices(self, agent: httpx.Client | None) -> dict[str, tuple[str, str | None]]:
        if agent is None:
            return {}
        answer = agent.get("/v1/devices")
        if answer.status_code != 200:
            return {}
        body = answer.json()
        states = {s["id"]: (s["state"], s.get("reason")) for s in body.get("scanners", [])}
        if body.get("printer"):
            states[body["printer"]["id"]] = (body["printer"]["state"], body["printer"].get("reason"))
        return states

    def _printer_status(self, settings: Settings, name: str) -> Check:
        from agent.devices import open_printer_connection
        from drivers.base import DeviceError
        from drivers.escpos_printer import query_status

        printer = settings.devices.printer
        assert printer is not None, "asked only for a configured printer"
        try:
            status = query_status(
                open_printer_connection(printer, settings.storage.database.parent / "receipts"), timeout=2
            )
        except DeviceError as exc:
            return Check(name, "fail", str(exc), "pos-edge print-test once it is back")
        if status.paper == "out" or status.online is False:
            return Check(
                name,
                "fail",
                f"{printer.url}: online={status.online} paper={status.paper}",
                "load paper and close the cover",
            )
        if status.paper == "low":
            return Check(name, "warn", f"{printer.url}: paper low", "have a roll ready")
        return Check(name, "ok", f"{printer.url}: online={status.online} paper={status.paper}")

    def _openable(self, path: Path, name: str, need_write: bool) -> Iterator[Check]:
        """Whether the service user may open `path` (owner, group — its own or the unit's — or other bits)."""
        try:
            user = pwd.getpwnam(self.service_user)
        except KeyError:  # not installed as a service (a developer's box): the user running the doctor
            mode = os.R_OK | (os.W_OK if need_write else 0)
            yield Check(
                name,
                "ok" if os.access(path, mode) else "fail",
                f"{path} {'can' if os.access(path, mode) else 'cannot'} be opened by you",
                f"check the owner and mode of {path}",
            )
            return
        info = path.stat()
        groups = {user.pw_gid} | {g.gr_gid for g in grp.getgrall() if user.pw_name in g.gr_mem}
        groups |= {grp.getgrnam(g).gr_gid for g in SERVICE_GROUPS if _group_exists(g)}
        if info.st_uid == user.pw_uid:
            bits = (info.st_mode >> 6) & 7
        elif info.st_gid in groups:
            bits = (info.st_mode >> 3) & 7
        else:
            bits = info.st_mode & 7
        need = 6 if need_write else 4
        if bits & need != need:
            owner = f"{_user_name(info.st_uid)}:{_group_name(info.st_gid)} {stat.filemode(info.st_mode)}"
            yield Check(
                name,
                "fail",
                f"{path} ({owner}) cannot be opened by {self.service_user}",
                "install the udev rules from `pos-edge devices --udev` and replug it"
                if path.is_char_device()
                else f"chown {self.service_user} {path}",
            )
        else:
            yield Check(name, "ok", f"{path} can be opened by {self.service_user}")

    # --- central and the clock ---------------------------------------------------------------------------------

    def _central(self, settings: Settings) -> Iterator[Check]:
        central = settings.central
        if not central.token.get_secret_value():
            yield Check(
                "central",
                "fail",
                "no store token: sync with central is off",
                "set POS_EDGE_CENTRAL__TOKEN in /etc/pos-edge/secrets.env",
            )
            return
        headers = {"Authorization": f"Bearer {central.token.get_secret_value()}", "X-Store-Id": settings.store.id}
        try:
            sent = time.monotonic()
            asked_at = self.now()
            answer = httpx.get(
                f"{central.url}/v1/keys/member-code",
                headers=headers,
                timeout=central.connect_timeout_s + central.read_timeout_s,
            )
            took = time.monotonic() - sent
        except httpx.HTTPError as exc:
            yield Check(
                "central",
                "fail",
                f"cannot reach {central.url}: {exc or type(exc).__name__}",
                "check the store's internet and central.url; the till sells offline meanwhile",
            )
            yield Check("clock", "skip", "central not reached: skew unknown")
            return
        if answer.status_code in (401, 403):
            yield Check(
                "central",
                "fail",
                f"{central.url} refused the store token ({answer.status_code})",
                "ask central's operator for this store's token",
            )
        elif answer.status_code >= 400:
            yield Check(
                "central",
                "fail",
                f"{central.url} answered {answer.status_code}",
                "check central.url and central's own health",
            )
        else:
            yield Check("central", "ok", f"{central.url} reached and the store token accepted ({took * 1000:.0f} ms)")
        yield self._skew(answer, asked_at, took, settings)

    def _skew(self, answer: httpx.Response, asked_at: datetime, took: float, settings: Settings) -> Check:
        try:
            theirs = parsedate_to_datetime(answer.headers["date"])
        except (KeyError, TypeError, ValueError):
            return Check("clock", "skip", "central's answer has no Date header")
        # Central stamped its answer somewhere during the request; its Date has whole seconds.
        skew = (asked_at - theirs).total_seconds() + took / 2
        uncertainty = 1 + took
        limit = settings.member_codes.clock_skew_s
        ahead = f"{abs(skew):.0f} s {'ahead of' if skew > 0 else 'behind'} central"
        fix = "turn on time sync: timedatectl set-ntp true (and check the RTC battery on a Raspberry Pi)"
        if abs(skew) - uncertainty > limit:
            return Check("clock", "fail", f"{ahead}: member codes are refused and receipts show the wrong time", fix)
        if abs(skew) - uncertainty > SKEW_WARN_S:
            return Check("clock", "warn", ahead, fix)
        return Check("clock", "ok", f"within {max(SKEW_WARN_S, uncertainty):.0f} s of central")


def read_environment_file(path: Path) -> dict[str, str]:
    """`KEY=value` lines of a systemd EnvironmentFile= (comments, blank lines and quotes as systemd reads them):
    the secrets the service gets, so the doctor checks with the same token the agent uses."""
    values = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")) or "=" not in line:
            continue
        key, value = (part.strip() for part in line.split("=", 1))
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key] = value
    return values


def render(checks: list[Check]) -> str:
    failed = sum(c.status == "fail" for c in checks)
    warned = sum(c.status == "warn" for c in checks)
    summary = "all checks passed" if not (failed or warned) else f"{failed} failed, {warned} warning(s)"
    return "\n".join([*(c.line() for c in checks), summary])


def _under_systemd() -> bool:
    return Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None  # sd_booted(3)


def _systemctl(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=10)


def _connect_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else "[::1]" if host == "::" else host


def _device_node(url) -> Path | None:
    """The file a device URL opens, where there is one to check."""
    if url.scheme in ("serial", "file"):
        return Path(url.path)
    if url.scheme == "camera":
        if url.path:
            return None if "%" in url.path else Path(url.path)
        return Path(f"/dev/video{url.text.split(':', 1)[1]}")
    return None  # tcp, usb, hid: found by address or id, checked by the agent's own view


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
