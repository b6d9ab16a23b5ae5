"""A throw-away Debian box for the service check: this machine's own root file system under an overlay (every
write lands in a temporary upper folder), booted with systemd as PID 1 by `systemd-nspawn --boot`.

Commands run inside with `nsenter` into the container's namespaces, so nothing here needs systemd on the host
(PID 1 of the host may be anything) nor systemd-machined: `--register=no --keep-unit` keep nspawn off the host's
bus. The container has a private network (loopback only): the agent, the demo central service and the WeChat Pay
simulator talk over its own 127.0.0.1, and no port of the host is taken.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NSPAWN_STATE = Path("/run/systemd/nspawn")


class ContainerError(Exception):
    """The container could not be made, booted or reached; the message says why."""


def preflight() -> list[str]:
    """What this machine lacks to run the check, each as a sentence (empty: nothing)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("run as root: the check mounts an overlay and boots a container")
    for tool, package in (("systemd-nspawn", "systemd-container"), ("nsenter", "util-linux"), ("curl", "curl")):
        if shutil.which(tool) is None:
            missing.append(f"{tool} is missing (Debian package {package}; `make service-check` installs it as root)")
    if "overlay" not in Path("/proc/filesystems").read_text():
        missing.append("the kernel has no overlay file system (modprobe overlay)")
    if not Path("/lib/systemd/systemd").exists():
        missing.append(
            "/lib/systemd/systemd is missing: the container boots this machine's own systemd (package systemd)"
        )
    return missing


@dataclass
class Answer:
    status: int
    body: object


class Container:
    """One booted container on an overlay of `/`. `close()` takes everything down and away, whatever state it is in."""

    def __init__(self, work: Path, name: str, binds: dict[Path, str]):
        self.work = work
        self.name = name
        self.binds = binds  # host path -> path inside, read-only
        self.upper, self.overlay_work, self.root = work / "upper", work / "work", work / "root"
        self.console = work / "console.log"
        self.nspawn: subprocess.Popen | None = None
        self.leader = 0  # the container's PID 1, as a host PID
        self.spawned_at = 0.0  # when systemd-nspawn was started last (monotonic)
        self.mounted = False
        self._lock_name = ""

    # --- the root and the boot ---------------------------------------------------------------------------------

    def mount(self) -> None:
        for folder in (self.upper, self.overlay_work, self.root):
            folder.mkdir()
        done = subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", f"lowerdir=/,upperdir={self.upper},workdir={self.overlay_work}", str(self.root)],
            capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode != 0:
            raise ContainerError(f"could not mount an overlay of / on {self.root}: {done.stderr.strip()}")
        self.mounted = True
        info = self.root.stat()
        self._lock_name = f"inode-{info.st_dev}:{info.st_ino}"  # nspawn's lock for this directory
        # A machine id of its own: its journal is its own, and it survives the power cut (persistent journal).
        (self.root / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")

    def path(self, inside: str) -> Path:
        """A path of the container's file system, to prepare it from the host."""
        return self.root / inside.lstrip("/")

    def boot(self, within: float = 90.0) -> float:
        """Boots the container; seconds until systemd says the system is up (running or degraded)."""
        command = [
            "systemd-nspawn", f"--directory={self.root}", f"--machine={self.name}", "--boot",
            "--private-network", "--register=no", "--keep-unit", "--link-journal=no", "--console=read-only",
            *(f"--bind-ro={host}:{inside}" for host, inside in self.binds.items()),
        ]  # fmt: skip
        started = self.spawned_at = time.monotonic()
        with self.console.open("ab") as log:
            self.nspawn = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        deadline = started + within
        self.leader = self._wait_leader(deadline)
        while True:
            try:
                state = self.run(
                    "systemctl",
                    "is-system-running",
                    "--wait",
                    check=False,
                    timeout=max(1.0, deadline - time.monotonic()),
                )
            except subprocess.TimeoutExpired:
                jobs = (
                    self.run("systemctl", "list-jobs", "--no-legend", "--plain", check=False)
                    .stdout.strip()
                    .replace("\n", "; ")
                )
                raise ContainerError(
                    f"the container did not finish booting within {within:.0f} s; jobs still waiting: {jobs}"
                ) from None
            if state.stdout.strip() in ("running", "degraded"):
                return time.monotonic() - started
            # Too early: systemd's private socket is not there yet.
            if time.monotonic() > deadline or self.nspawn.poll() is not None:
                raise ContainerError(
                    f"the container did not finish booting ({state.stdout.strip() or state.stderr.strip()}); {self.console_tail()}"
                )
            time.sleep(0.2)

    def _wait_leader(self, deadline: float) -> int:
        assert self.nspawn is not None
        while time.monotonic() < deadline:
            if self.nspawn.poll() is not None:
                raise ContainerError(
                    f"systemd-nspawn exited with status {self.nspawn.returncode}: {self.console_tail()}"
                )
            for child in _children(self.nspawn.pid):
                if _comm(child) == "systemd":
                    return child
            time.sleep(0.05)
        raise ContainerError(f"systemd did not start in the container; {self.console_tail()}")

    def console_tail(self, lines: int = 8) -> str:
        try:
            text = self.console.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no console output"
        return "console: " + " | ".join(line.strip() for line in text[-lines:])

    def power_cut(self) -> float:
        """Every process of the container killed at once, as a power cut would (no shutdown, no clean stop);
        the monotonic time of the cut. The file system (the overlay) stays for the next boot."""
        cut = time.monotonic()
        self._kill_all()
        return cut

    def _kill_all(self) -> None:
        # SIGKILL to the PID namespace's init makes the kernel kill everything in it.
        for pid in (self.leader, self.nspawn.pid if self.nspawn else 0):
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.nspawn is not None:
            try:
                self.nspawn.wait(timeout=30)
            except subprocess.TimeoutExpired as exc:
                raise ContainerError(f"systemd-nspawn (PID {self.nspawn.pid}) did not exit after SIGKILL") from exc
        self.leader = 0

    def close(self) -> list[str]:
        """Stops the container, unmounts the overlay and removes the work folder; what could not be done."""
        problems = []
        try:
            if self.nspawn is not None and self.nspawn.poll() is None:
                self._kill_all()
        except ContainerError as exc:
            problems.append(str(exc))
        if self.mounted:
            done = subprocess.run(["umount", str(self.root)], capture_output=True, text=True)
            if done.returncode != 0:
                # Still busy (a process of ours in there): detach it, the kernel frees it when the last user goes.
                subprocess.run(["umount", "--lazy", str(self.root)], capture_output=True)
                problems.append(f"overlay unmounted lazily: {done.stderr.strip()}")
            self.mounted = False
        # nspawn leaves these behind when it is killed (and the propagate folder whenever /run is not a tmpfs).
        for leftover in (NSPAWN_STATE / "propagate" / self.name, NSPAWN_STATE / "unix-export" / self.name):
            shutil.rmtree(leftover, ignore_errors=True)
        if self._lock_name:
            (NSPAWN_STATE / "locks" / self._lock_name).unlink(missing_ok=True)
        shutil.rmtree(self.work, ignore_errors=True)
        if self.work.exists():
            problems.append(f"{self.work} could not be removed")
        return problems

    # --- inside --------------------------------------------------------------------------------------------------

    def run(
        self, *command: str, env: dict[str, str] | None = None, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """A command inside, as root, with a clean environment (nothing of the host's leaks in)."""
        if not self.leader:
            raise ContainerError("the container is not running")
        environment = [f"{k}={v}" for k, v in {"PATH": PATH, "LANG": "C.UTF-8", "HOME": "/root", **(env or {})}.items()]
        done = subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", "env", "-i", *environment, *command],
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        if check and done.returncode != 0:
            raise ContainerError(
                f"{' '.join(command)} exited {done.returncode}: {(done.stderr or done.stdout).strip()[-2000:]}"
            )
        return done

    def unit(self, unit: str, *properties: str) -> dict[str, str]:
        """`systemctl show` of a unit inside."""
        shown = self.run("systemctl", "show", unit, *(f"--property={p}" for p in properties)).stdout
        return dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)

    def http(
        self, method: str, path: str, body: object = None, token: str = "", port: int = 8765, timeout: float = 30.0
    ) -> Answer:
        """A request to a service on the container's loopback, with curl in its network namespace."""
        # -w: the status after the body, on a line of its own.
        curl = ["curl", "-sS", "--noproxy", "*", "-m", str(timeout), "-X", method, "-w", "\n%{http_code}"]
        command = ["nsenter", "-t", str(self.leader), "-n", *curl]
        if token:
            command += ["-H", f"Authorization: Bearer {token}"]
        if body is not None:
            command += ["-H", "Content-Type: application/json", "--data-binary", json.dumps(body)]
        done = subprocess.run(
            [*command, f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True, timeout=timeout + 5
        )
        if done.returncode != 0:
            raise ContainerError(f"{method} {path}: curl exited {done.returncode}: {done.stderr.strip()}")
        text, _, status = done.stdout.rpartition("\n")
        try:
            content: object = json.loads(text)
        except ValueError:
            content = text
        return Answer(int(status), content)

    def journal(self, *matches: str, since: float | None = None) -> list[dict]:
        """Journal entries inside as JSON objects (MESSAGE, __MONOTONIC_TIMESTAMP, UNIT_RESULT, ...); with `since`
        (this host's monotonic clock, which the container shares) only this boot's entries from then on. Not
        --after-cursor: journalctl 252 with a --unit match skips the first entry after the cursor."""
        command = ["journalctl", "--output=json", "--no-pager", *matches]
        if since is not None:
            command.append("--boot")
        entries = [json.loads(line) for line in self.run(*command).stdout.splitlines() if line.strip()]
        if since is not None:
            entries = [e for e in entries if int(e["__MONOTONIC_TIMESTAMP"]) >= since * 1e6]
        return entries


def _children(pid: int) -> list[int]:
    found = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(c) for c in (task / "children").read_text().split()]
    except OSError:
        pass
    return found


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""
