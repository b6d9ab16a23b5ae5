"""Code payment: provider protocol clients (WeChat Pay v2, Alipay face-to-face), the gateway state machine the
agent talks to, member-card points sync and settlement-bill reconciliation."""
