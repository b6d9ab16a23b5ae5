"""One exception per failure a caller can act on. Routers let them through; `central.main` answers each with its
HTTP status and an `ErrorBody`, and the CLI prints the message."""

from __future__ import annotations


class CentralError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class Unauthorized(CentralError):
    status = 401
    code = "unauthorized"


class Forbidden(CentralError):
    status = 403
    code = "forbidden"


class NotFound(CentralError):
    status = 404
    code = "not_found"


class Conflict(CentralError):
    status = 409
    code = "conflict"


class TooLarge(CentralError):
    status = 413
    code = "too_large"


class Invalid(CentralError):
    status = 422
    code = "invalid"


class ProviderUnavailable(CentralError):
    """The payment provider could not be asked (unreachable, or an answer that is not its protocol)."""

    status = 502
    code = "provider_unavailable"
