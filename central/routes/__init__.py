"""One router per resource; `central.main` assembles them under /v1."""
