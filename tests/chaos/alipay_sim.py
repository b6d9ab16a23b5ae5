"""The Alipay simulator in a process of its own for the chaos run (the WeChat Pay one has `pos-central simulate
wechat`): `python -m tests.chaos.alipay_sim --port 8802 --merchant-public-key m.pem --alipay-private-key a.pem`."""

from __future__ import annotations

import argparse
from pathlib import Path

import uvicorn

from central.payments.simulators.alipay import AlipaySimulator


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.alipay_sim", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--merchant-public-key", type=Path, required=True, help="verifies the merchant's requests")
    parser.add_argument("--alipay-private-key", type=Path, required=True, help="signs the simulator's answers")
    parser.add_argument("--app-id", required=True)
    parser.add_argument("--userpaying-seconds", type=float, default=1.0)
    parser.add_argument("--slow-seconds", type=float, default=3.0)
    args = parser.parse_args(argv)
    simulator = AlipaySimulator(
        args.merchant_public_key.read_text(),
        args.alipay_private_key.read_text(),
        app_id=args.app_id,
        userpaying_seconds=args.userpaying_seconds,
        slow_seconds=args.slow_seconds,
    )
    uvicorn.run(simulator.app(), host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
