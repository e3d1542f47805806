"""Typed errors of the external APIs, shared by every client.

Each error says whether it is ``permanent`` (retrying cannot help: a 401, a 404, a malformed
page) or transient (a 429, a 5xx, a timeout).  Actors retry only transient errors
(``actors.retry.transient_only``), so a permanent one goes straight to the dead letters.

The text of an error is what an operator reads in the dead-letter queue: it names the API, the
call, the status and what the API said, and never a credential (clients redact their secrets
from anything the server echoes before building an error).
"""
from __future__ import annotations

#: How much of a server's message an error keeps; an HTML error page is not a message.
MAX_MESSAGE_CHARS = 300


class ApiError(Exception):
    """A call to an external API failed.

    Parameters:
      message(str): What went wrong, in words (the server's message when it gave one).
      api(str): The API, e.g. ``"backmarket"``.
      endpoint(str): The route template of the call, e.g. ``"GET /ws/listings"``.
      status(int): The HTTP status, or ``None`` when there was no response.
      code(str): The API's error code, when it gave one.
      request_id(str): The API's request id, to quote to its support.
      permanent(bool): Override the class's default.
    """

    #: Whether retrying the same call can never succeed.
    permanent: bool = True

    def __init__(self, message: str, *, api: str = "", endpoint: str = "", status: int | None = None,
                 code: str | None = None, request_id: str | None = None, permanent: bool | None = None) -> None:
        super().__init__(message)
        self.message = _shorten(message)
        self.api = api
        self.endpoint = endpoint
        self.status = status
        self.code = code
        self.request_id = request_id
        if permanent is not None:
            self.permanent = permanent

    def _details(self) -> list[str]:
        details = []
        if self.code:
            details.append(f"code={self.code}")
        if self.request_id:
            details.append(f"request_id={self.request_id}")
        return details

    def __str__(self) -> str:
        where = " ".join(part for part in (self.api, self.endpoint) if part) or "API call"
        status = f"HTTP {self.status}" if self.status is not None else "no response"
        kind = "permanent" if self.permanent else "transient"
        text = f"{where}: {status} ({type(self).__name__}, {kind}): {self.message}"
        details = self._details()
        return f"{text} [{', '.join(details)}]" if details else text

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"


class BadRequest(ApiError):
    """400: the API refused the request as invalid."""

    permanent = True


class Unauthorized(ApiError):
    """401: the credentials are missing, wrong or revoked."""

    permanent = True


class Forbidden(ApiError):
    """403: not allowed, or blocked by a WAF (Cloudflare: ``cf_ray`` identifies the block)."""

    permanent = True

    def __init__(self, message: str, *, cf_ray: str | None = None, **kwargs) -> None:
        super().__init__(message, **kwargs)
        self.cf_ray = cf_ray

    def _details(self) -> list[str]:
        details = super()._details()
        if self.cf_ray:
            details.append(f"cf-ray={self.cf_ray}")
        return details


class NotFound(ApiError):
    """404: no such resource, or it does not belong to this account."""

    permanent = True


class RateLimited(ApiError):
    """429: over the API's quota.  ``reset_at`` (epoch seconds) is when it resets, if the API said."""

    permanent = False

    def __init__(self, message: str, *, reset_at: float | None = None, **kwargs) -> None:
        super().__init__(message, **kwargs)
        self.reset_at = reset_at

    def _details(self) -> list[str]:
        details = super()._details()
        if self.reset_at is not None:
            details.append(f"reset_at={self.reset_at:.0f}")
        return details


class ServerError(ApiError):
    """5xx: the API failed on its side."""

    permanent = False


class TransportError(ApiError):
    """No usable response: timeout, refused or dropped connection."""

    permanent = False


class MalformedResponse(ApiError):
    """The API answered, but not in the shape its spec promises; the message names what was wrong."""

    permanent = True


def error_class(status: int) -> type[ApiError]:
    """The error class for an HTTP ``status`` that is not a success."""
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    if status >= 500:
        return ServerError
    return ApiError


def is_transient(error: BaseException) -> bool:
    """True for an :class:`ApiError` a retry may fix."""
    return isinstance(error, ApiError) and not error.permanent


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 429: RateLimited,
}


def _shorten(message: str) -> str:
    text = " ".join(str(message).split())
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[:MAX_MESSAGE_CHARS - 1] + "…"
    return text
