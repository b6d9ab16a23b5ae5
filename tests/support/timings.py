"""Central's payment timings for tests, shrunk so a USERPAYING customer or a reversal takes a fraction of a
second (test_payments_timing.py runs the real 5/15/30 s on a fake clock). Pass them as central settings:
`central_factory(..., **FAST_PAYMENTS)`."""

from __future__ import annotations

FAST_PAYMENTS: dict[str, float] = dict(
    payments_poll_seconds=0.05,
    payments_limit_seconds=3.0,  # short enough that a test can wait for central's own give-up
    payments_reverse_not_before_seconds=0.3,
    payments_answer_seconds=2.0,
    payments_retry_max_seconds=0.1,
    wechat_timeout_seconds=0.4,
)

# A whole store (a till, a kiosk, the screens): a give-up limit long enough that a loaded machine never turns a
# slow confirmation into a reversal, and a WeChat timeout (1 s) above the store simulator's slow answer (0.7 s).
STORE_PAYMENTS: dict[str, float] = FAST_PAYMENTS | dict(
    payments_limit_seconds=20.0,
    payments_reverse_not_before_seconds=0.2,
    wechat_timeout_seconds=1.0,
)
