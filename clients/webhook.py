"""The stock alerts' webhook: a Slack-compatible message, POSTed with retries (tenacity).

:func:`slack_message` builds ``{"text": ..., "blocks": [...]}``: ``text`` is the whole message in
one line (what Slack shows in notifications, and what a receiver that ignores blocks reads) and
``blocks`` the Block Kit layout (a header, a section with fields, a context line).
:func:`post_webhook` sends it: 5xx, 408, 429 and network failures are retried inside the call
with exponential backoff; other 4xx are permanent (retrying cannot fix a revoked webhook).

The URL is a secret (a Slack incoming-webhook URL carries its token in the path): it is never
logged, and the errors raised here name the status and the receiver's answer, never the URL.
"""
from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

import aiohttp
from pydantic import SecretStr
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential
from yarl import URL

from clients.errors import ApiError, ServerError, TransportError, error_class, is_transient

#: The ``api`` / ``endpoint`` the errors and metrics name (never the URL).
API = "alert-webhook"
ENDPOINT = "POST webhook"

#: Slack's limits: a header's text, a field's text, the fields of a section.
HEADER_MAX_CHARS = 150
FIELD_MAX_CHARS = 2000


def _escape(value: object) -> str:
    """Escape ``&``, ``<`` and ``>`` as Slack's mrkdwn requires (a SKU may hold them)."""
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _when(moment) -> str:
    return "-" if moment is None else f"{moment:%Y-%m-%d %H:%M} UTC"


def slack_message(alert) -> dict[str, Any]:
    """The Slack-compatible body announcing ``alert`` (a :class:`db.alerts.Alert`) in its current state."""
    where = ("total stock" if alert.marketplace is None
             else f"available on {alert.marketplace_name or alert.marketplace}")
    now = alert.quantity if alert.state == "firing" else alert.resolved_quantity
    fields = [("SKU", alert.sku), ("Scope", where), ("Stock", "-" if now is None else str(now)),
              ("Threshold", str(alert.threshold)), ("Fired", _when(alert.fired_at))]
    if alert.state == "firing":
        title, emoji = "Low stock", ":rotating_light:"
        headline = f"{title}: {alert.sku} ({where}) is {alert.quantity}, below its threshold of {alert.threshold}"
    else:
        fields += [("Quantity when fired", str(alert.quantity)), ("Resolved", _when(alert.resolved_at))]
        emoji = ":white_check_mark:"
        if now is not None and now >= alert.threshold:
            title, state = "Stock recovered", f"back at {now}"
        else:  # the rule was removed or lowered: the alert ended without the stock coming back
            title = "Alert ended"
            state = f"{'-' if now is None else now}, no longer checked against this threshold (its rule changed)"
        headline = f"{title}: {alert.sku} ({where}) is {state} (threshold {alert.threshold})"
    header = f"{title}: {alert.sku}"
    section_text = f"{emoji} {_escape(headline)}"
    if alert.title:
        section_text += f"\n_{_escape(alert.title)}_"
    return {
        "text": f"{emoji} {_escape(headline)}",  # Slack reads it as mrkdwn too
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": header[:HEADER_MAX_CHARS], "emoji": True}},
            {"type": "section", "text": {"type": "mrkdwn", "text": section_text[:FIELD_MAX_CHARS]},
             "fields": [{"type": "mrkdwn", "text": f"*{name}*\n{_escape(value)}"[:FIELD_MAX_CHARS]}
                        for name, value in fields[:10]]},
            {"type": "context", "elements": [{"type": "mrkdwn",
                                              "text": f"stocksync alert #{alert.id} · {alert.state} · "
                                                      f"`stocksync alerts list`"}]},
        ],
    }


class WebhookError(ApiError):
    """The webhook refused the message or could not be reached (the text never shows the URL)."""


def _checked_url(url: SecretStr | str) -> str:
    value = url.get_secret_value() if isinstance(url, SecretStr) else url
    try:
        parsed = URL(value)
    except (TypeError, ValueError):
        parsed = None
    if not value or parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise WebhookError("STOCK_ALERT_WEBHOOK_URL is not an http(s) URL", api=API, endpoint=ENDPOINT)
    return value


def _redact(message: str, url: str) -> str:
    path = URL(url).raw_path_qs
    message = message.replace(url, "<webhook>")
    return message.replace(path, "<path>") if len(path) > 1 else message


async def post_once(session: aiohttp.ClientSession, url: str, body: dict[str, Any], timeout_s: float) -> int:
    """POST ``body`` once; return the status of a 2xx answer, else raise a :class:`WebhookError`-like error."""
    try:
        async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=timeout_s),
                                allow_redirects=False) as response:
            answer = (await response.text(errors="replace"))[:300]
            status = response.status
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as error:
        # The exception's text may quote the URL (aiohttp's do): only its type and OS reason go on.
        reason = getattr(getattr(error, "os_error", None), "strerror", None) or ""
        raise TransportError(f"no answer ({type(error).__name__}{': ' + reason if reason else ''})", api=API,
                             endpoint=ENDPOINT) from None
    if 200 <= status < 300:
        return status
    cls = error_class(status)
    transient = status in (408, 429) or status >= 500
    raise cls(_redact(answer, url) or "(empty answer)", api=API, endpoint=ENDPOINT, status=status,
              permanent=not transient)


async def post_webhook(session: aiohttp.ClientSession, url: SecretStr | str, body: dict[str, Any], *,
                       timeout_s: float = 10.0, attempts: int = 3, backoff_s: float = 0.5,
                       on_attempt: Callable[[int, BaseException | None], Any] | None = None,
                       sleep: Callable[[float], Awaitable[None]] | None = None) -> int:
    """POST ``body`` to ``url``, retrying transient failures up to ``attempts`` times in all.

    Waits ``backoff_s``, then twice as long, ... (at most 16 × ``backoff_s``) between attempts.
    ``on_attempt(number, error)`` is called after each attempt (error None on success).

    Returns:
      The HTTP status of the accepted answer.

    Raises:
      ApiError: The last failure (``permanent`` for a refusal such as 400, 403 or 404, or a bad URL).
    """
    target = _checked_url(url)
    retrying = AsyncRetrying(stop=stop_after_attempt(max(1, attempts)),
                             wait=wait_exponential(multiplier=backoff_s, min=backoff_s, max=16 * backoff_s),
                             retry=retry_if_exception(is_transient), reraise=True,
                             **({"sleep": sleep} if sleep else {}))
    async for attempt in retrying:
        with attempt:
            number = attempt.retry_state.attempt_number
            try:
                status = await post_once(session, target, body, timeout_s)
            except ApiError as error:
                if on_attempt:
                    on_attempt(number, error)
                raise
            if on_attempt:
                on_attempt(number, None)
            return status
    raise ServerError("no attempt was made", api=API, endpoint=ENDPOINT)  # unreachable: tenacity reraises


__all__ = ["API", "ENDPOINT", "WebhookError", "post_once", "post_webhook", "slack_message"]
