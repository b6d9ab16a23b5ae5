"""Log lines are one event each, key=value, and never carry a customer's secrets."""

from __future__ import annotations

import logging

from agent.logs import KeyValueFormatter


def render(message: str, *args, **extra) -> str:
    record = logging.LogRecord("agent.test", logging.INFO, __file__, 1, message, args, None)
    record.__dict__.update(extra)
    return KeyValueFormatter(with_time=False).format(record)


def test_one_line_with_level_logger_and_fields():
    line = render("print job done", job="01J9", printer="tcp://10.0.0.9:9100", note='two words "quoted"')
    assert line == 'level=INFO logger=agent.test msg="print job done" job=01J9 printer=tcp://10.0.0.9:9100 note="two words \\"quoted\\""'


def test_secrets_are_masked_wherever_they_appear():
    line = render(
        "charged %s for %s", "134512345678901234", "+8613812345678",
        authorization="Bearer eyJhbGciOi.secret", member_code="M1.AAEAAAAAbTEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDEyMzQ1Njc4OTA",
    )  # fmt: skip
    for secret in ("134512345678901234", "13812345678", "eyJhbGciOi.secret", "bTEyMzQ1Njc4OTAxMjM0NTY3ODkw"):
        assert secret not in line
    assert "1345**********1234" in line and "+86138****5678" in line and "Bearer ***" in line


def test_exceptions_stay_on_one_line():
    try:
        raise ValueError("bad scan 13812345678")
    except ValueError:
        import sys

        record = logging.LogRecord("agent.test", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = KeyValueFormatter(with_time=False).format(record)
    assert "\n" not in line and "ValueError" in line and "13812345678" not in line
