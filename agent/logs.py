"""Logging to stderr, one line per event, in a form journald keeps well:

    level=INFO logger=agent.runtime msg="database ready" path=/var/lib/pos-edge/agent.db schema=0003

Fields come from `extra={...}`. Whatever a line says, auth codes, member codes, bearer tokens and mobile
numbers are masked in it before it leaves the process: a log is no place for a customer's secrets.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from datetime import datetime, timezone

from agent.pii import mask_code

# Attributes every record has, and uvicorn's terminal-only duplicate of its message: not fields of the event.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName", "color_message"}

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
    def __init__(self, with_time: bool):
        super().__init__()
        self.with_time = with_time

    def format(self, record: logging.LogRecord) -> str:
        parts = []
        if self.with_time:
            parts.append("time=" + datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"))
        parts += [f"level={record.levelname}", f"logger={record.name}", f"msg={_quote(record.getMessage())}"]
        parts += [f"{key}={_quote(value)}" for key, value in vars(record).items() if key not in _STANDARD]
        if record.exc_info:
            parts.append(f"exc={_quote(self.formatException(record.exc_info))}")
        return redact(" ".join(parts))


def configure(level: str = "INFO") -> None:
    """Send the process's logs to stderr. journald timestamps lines itself; elsewhere each line carries its time."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter(with_time="JOURNAL_STREAM" not in os.environ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Libraries that narrate routine work at INFO: alembic (every migration context; agent.db logs real
    # upgrades), APScheduler (every job run; agent.sync logs changes of state), httpx (every request).
    for chatty in ("alembic", "apscheduler", "httpx"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
