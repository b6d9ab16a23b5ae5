"""The test service itself: faults as the agent's sync tests need them, and a restart on the same port."""

from __future__ import annotations

import httpx
import pytest


@pytest.mark.parametrize("central_database_url", ["sqlite"], indirect=True)
def test_faults_and_restart(central):
    store = central.add_store("S1")
    central.faults.respond("/v1/keys", 429, '{"error": "slow_down", "message": "later"}', headers={"Retry-After": "2"})
    central.faults.respond("/v1/keys", 200, "{not json", times=2)
    central.faults.respond("/v1/keys", 500)
    with central.client(store) as client:
        throttled = client.get("/v1/keys/member-code")
        assert throttled.status_code == 429 and throttled.headers["retry-after"] == "2"
        for _ in range(2):
            with pytest.raises(ValueError):
                client.get("/v1/keys/member-code").json()
        assert client.get("/v1/keys/member-code").status_code == 500
        assert client.get("/v1/keys/member-code").status_code == 200  # the rules are used up
        central.stop()
        with pytest.raises(httpx.ConnectError):
            client.get("/v1/keys/member-code")
        central.start()
        assert client.get("/v1/keys/member-code").status_code == 200
    assert central.faults.hits["/v1/keys/member-code"] == 6
