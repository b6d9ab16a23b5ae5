"""The test store's secrets, one definition for every test folder: the WeChat Pay merchant the simulator and
central share, the agent's API token and the phone-hash key a till and central agree on (so a phone typed at
the till finds the member central registered). Public test values, never used outside tests."""

from __future__ import annotations

# The WeChat Pay merchant: the simulator signs with WECHAT_KEY, central is configured with the same three.
APPID = "wx5f3c9a1e7b2d4068"
MCH_ID = "1900000109"
WECHAT_KEY = "8f14e45fceea167a5a36dedd4bea2543"

# The bearer token of the agent's local API in the whole-store tests.
API_TOKEN = "test-api-token-0123456789"

# The phone-hash key as settings and central hold it (text), and as the agent's member cache takes it (bytes).
PHONE_KEY = "test-phone-hash-key-0123456789"
PHONE_KEY_BYTES = PHONE_KEY.encode()

# The test store's supervisor: the PIN typed on the till and the text of the supervisor card scanned.
SUPERVISOR_ID = "S001"
SUPERVISOR_PIN = "2468"
SUPERVISOR_CARD = "SUP0001"
