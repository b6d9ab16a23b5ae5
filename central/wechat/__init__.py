"""WeChat's mini program and official account feeding central's identity (docs/WECHAT.md).

- `api_client`: one client per app for WeChat's server API (api.weixin.qq.com): access tokens, rate limit, errors.
- `opendata`: decrypting the user data a mini program hands over (AES-128-CBC under the session key) and its watermark.
- `miniprogram`: login (jscode2session), session tokens, the UnionID from user data, phone quick-fill.
- `official_account`: the follower walk (user/get, user/info/batchget) that links followers' openids by UnionID.
- `simulator`: the same calls, wire-level, for the demo and the tests (`pos-central simulate wechat`).
"""
