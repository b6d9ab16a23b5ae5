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
    assert (
        line
        == 'level=INFO logger=agent.test msg="print job done" job=01J9 printer=tcp://10.0.0.9:9100 note="two words \\"quoted\\""'
    )


def test_secrets_are_masked_wherever_they_appear():
    line = render(
        "charged %s for %s",
        "134512345678901234",
        "+8613812345678",
        authorization="Bearer eyJhbGciOi.secret",
        member_code="M1.AAEAAAAAbTEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDEyMzQ1Njc4OTA",
    )
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


def record_at(
    created: float, message: str = "scanner %s", level: int = logging.WARNING, name: str = "drivers.base"
) -> logging.LogRecord:
    record = logging.LogRecord(name, level, __file__, 1, message, ("disconnected",), None)
    record.created = created
    return record


def test_a_flapping_device_is_let_through_a_few_times_a_minute_with_the_count_held_back():
    from agent.logs import RateLimit

    limit = RateLimit(burst=3, window_s=60)
    passed = [limit.filter(record_at(t)) for t in range(10)]  # ten "scanner disconnected" lines in ten seconds
    assert passed == [True] * 3 + [False] * 7
    assert limit.filter(record_at(5, "printer on hold"))  # another kind of line is not held back with it
    later = record_at(61)
    assert limit.filter(later) and later.suppressed == 7
    line = KeyValueFormatter(with_time=False).format(later)
    assert line.endswith("suppressed=7")


def test_errors_are_never_held_back():
    from agent.logs import RateLimit

    limit = RateLimit(burst=1, window_s=60)
    assert all(limit.filter(record_at(t, "payment unknown", logging.ERROR)) for t in range(50))


def test_under_systemd_lines_carry_their_priority_and_no_time(tmp_path):
    import os

    from agent.logs import writes_to_journal

    with open(tmp_path / "stream", "w") as stream:
        info = os.fstat(stream.fileno())
        assert writes_to_journal({"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"}, stream)
        # Inherited by a child whose stderr went elsewhere: not the journal.
        assert not writes_to_journal({"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino + 1}"}, stream)
        assert not writes_to_journal({}, stream)
    line = KeyValueFormatter(with_time=False, with_priority=True).format(record_at(0))
    assert line.startswith("<4>level=WARNING logger=drivers.base") and "time=" not in line


def test_the_agent_under_systemd_logs_no_code_phone_or_token(stack_factory):
    import re

    from tests.checkout_stack import wechat_code
    from tests.support.credentials import API_TOKEN

    stack = stack_factory(separate_process=True, as_service=True)
    code = wechat_code("00", customer="0077")
    stack.add_member(points=10, phone="13912345678", payer=code)
    session = stack.open_session()
    stack.api.put(
        f"/v1/sessions/{session['id']}/basket",
        json={"lines": [{"sku": "6901234567892", "name": "水", "qty": 1, "unit_price_fen": 200}]},
    )
    stack.api.post(f"/v1/sessions/{session['id']}/phone", json={"phone": "13912345678", "confirmed": True})
    stack.scan(code)
    stack.wait_session(session["id"], lambda s: s["state"] == "closed")
    stack.api.post("/v1/sessions", headers={"Authorization": "Bearer wrong-token-abcdef"})  # a bad token, refused
    stack.stop()
    log = (stack.tmp / "agent.log").read_text()
    lines = [line for line in log.splitlines() if line.strip()]
    assert any("agent ready" in line for line in lines)
    for line in lines:
        assert re.match(r"<[2-7]>level=", line), line  # journald reads the priority; no time of our own
        assert "time=" not in line
    for secret in (code, "13912345678", API_TOKEN, "wrong-token-abcdef"):
        assert secret not in log
