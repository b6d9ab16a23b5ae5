"""Wire-level payment provider simulators for the demo and the tests: they speak the providers' real protocols
(signatures checked and made with the protocol's algorithm), keep their orders in memory, pick a scenario from
the auth code, and write settlement bills from what they processed. See docs/PAYMENTS.md for the scenarios.

`serve_in_thread` runs any ASGI app on 127.0.0.1 in a background thread (tests, `pos-central simulate`).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any


class ServedApp:
    """An ASGI app served by uvicorn on a loopback port of its own, in a daemon thread."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        # IPPROTO_TCP named so asyncio sets TCP_NODELAY on accepted connections (no 40 ms delayed-ACK stalls).
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        config = uvicorn.Config(
            app, log_config=None, log_level="warning", access_log=False, timeout_graceful_shutdown=1, lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._server.serve(sockets=[self._sock])), name=f"sim:{self.port}", daemon=True
        )

    def start(self) -> ServedApp:
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the simulator on {self.url} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)


def serve_in_thread(app: Any, host: str = "127.0.0.1", port: int = 0) -> ServedApp:
    return ServedApp(app, host, port).start()
