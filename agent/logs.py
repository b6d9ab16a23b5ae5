"""Logging to stderr, one line per event, in a form journald keeps well:

    level=INFO logger=agent.runtime msg="database ready" path=/var/lib/pos-edge/agent.db schema=0003

Fields come from `extra={...}`. Whatever a line says, auth codes, member codes, bearer tokens and mobile
numbers are masked in it before it leaves the process: a log is no place for a customer's secrets.

Under systemd (stderr is the journal's stream) a line carries no time, since journald stamps it, and starts with
its syslog priority (`<4>` for a warning), so `journalctl -p warning` finds it. A kind of line that repeats fast
(a scanner flapping, a noisy serial line) is let through a few times a minute, with the count of those held back.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from datetime import UTC, datetime

from agent.pii import mask_code

# syslog priorities journald reads from a `<N>` prefix (sd-daemon(3)).
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

# Attributes every record has, and uvicorn's terminal-only duplicate of its message: not fields of the event.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}

_SECRETS = re.compile(
    r"(?P<bearer>(?i:bearer)\s+)(?P<token>[^\s\"']+)"
    r"|(?P<member>M1\.[A-Za-z0-9_-]{16,})"
    r"|(?<![0-9])(?P<code>[0-9]{16,24})(?![0-9])"
    r"|(?<![0-9])(?P<phone>(?:\+?86)?1[3-9][0-9]{9})(?![0-9])"
)


def redact(text: str) -> str:
    def mask(match: re.Match[str]) -> str:
        if match["bearer"]:
            return f"{match['bearer']}***"
        if match["phone"]:
            return f"{match['phone'][:-8]}****{match['phone'][-4:]}"
        return mask_code(match.group())

    return _SECRETS.sub(mask, text)


def _quote(value: object) -> str:
    text = str(value)
    if text and not re.search(r'[\s="\\]', text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class KeyValueFormatter(logging.Formatter):
    def __init__(self, with_time: bool, with_priority: bool = False):
        super().__init__()
        self.with_time = with_time
        self.with_priority = with_priority

    def format(self, record: logging.LogRecord) -> str:
        parts = []
        if self.with_priority:
            parts.append(f"<{_PRIORITY.get(record.levelno, 6)}>level={record.levelname}")
        if self.with_time:
            parts.append("time=" + datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"))
        if not self.with_priority:
            parts.append(f"level={record.levelname}")
        parts += [f"logger={record.name}", f"msg={_quote(record.getMessage())}"]
        parts += [f"{key}={_quote(value)}" for key, value in vars(record).items() if key not in _STANDARD]
        if record.exc_info:
            parts.append(f"exc={_quote(self.formatException(record.exc_info))}")
        return redact(" ".join(parts))


class RateLimit(logging.Filter):
    """At most `burst` lines of one kind (logger, level, message template) per `window_s`; the first line let
    through after a pause carries `suppressed=N`. Errors always pass: they are rare and each one matters."""

    def __init__(self, burst: int = 20, window_s: float = 60.0):
        super().__init__()
        self.burst = burst
        self.window_s = window_s
        self._kinds: dict[tuple[str, int, str], list] = {}  # kind -> [window start, lines in window, held back]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        kind = (record.name, record.levelno, str(record.msg))
        seen = self._kinds.get(kind)
        if seen is None or record.created - seen[0] >= self.window_s:
            held = seen[2] if seen else 0
            if len(self._kinds) > 1000:  # many kinds over a long run: forget those whose window has passed
                self._kinds = {k: v for k, v in self._kinds.items() if record.created - v[0] < self.window_s}
            self._kinds[kind] = [record.created, 1, 0]
            if held:
                record.suppressed = held
            return True
        if seen[1] < self.burst:
            seen[1] += 1
            return True
        seen[2] += 1
        return False


def writes_to_journal(environ=os.environ, stream=sys.stderr) -> bool:
    """True when `stream` is the journal stream systemd connected (JOURNAL_STREAM is `device:inode` of it), not
    merely inherited by a child whose stderr was redirected elsewhere (systemd.exec(5))."""
    try:
        device, inode = (int(part) for part in environ.get("JOURNAL_STREAM", "").split(":"))
        info = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (info.st_dev, info.st_ino) == (device, inode)


def configure(level: str = "INFO") -> None:
    """Send the process's logs to stderr. journald timestamps lines itself; elsewhere each line carries its time."""
    handler = logging.StreamHandler(sys.stderr)
    journal = writes_to_journal()
    handler.setFormatter(KeyValueFormatter(with_time=not journal, with_priority=journal))
    handler.addFilter(RateLimit())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Libraries that narrate routine work at INFO: alembic (every migration context; agent.db logs real
    # upgrades), APScheduler (every job run; agent.sync logs changes of state), httpx (every request).
    for chatty in ("alembic", "apscheduler", "httpx"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
