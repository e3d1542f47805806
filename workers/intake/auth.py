"""Intake authentication: Shopify's HMAC, the producers' signed timestamp, URL secrets, read tokens.

Every comparison here is constant-time (:func:`hmac.compare_digest`): how long a check takes must
not tell an attacker how much of a guess was right.  Secrets come in as ``str`` or ``bytes`` and
are never put in an exception or a log line by this module.

The producers' scheme is Stripe's: the header
``X-Stocksync-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>." + raw body>``; several
``v1`` values may be given (key rotation), and a timestamp further than the tolerance from now,
in the past or in the future (as Svix does), is refused, so a captured request cannot be replayed
later.
"""
from __future__ import annotations

import hashlib
import hmac
import time
from typing import Iterable

from core.signatures import shopify_hmac

#: The header an in-house producer signs its request with.
SIGNATURE_HEADER = "X-Stocksync-Signature"

#: The header Shopify signs its webhooks with.
SHOPIFY_HMAC_HEADER = "X-Shopify-Hmac-Sha256"

#: The scheme of the read API's ``Authorization`` header.
BEARER = "Bearer"

#: Default tolerance of the producers' timestamp, in seconds (Stripe's default).
DEFAULT_TOLERANCE_S = 300.0


class SignatureError(Exception):
    """A request's signature is missing, malformed, wrong or stale; the message says which.

    The message is safe to send back to the caller: it never contains a secret or the expected
    signature.
    """


def _key(secret: str | bytes) -> bytes:
    # surrogatepass: a header or path that was not UTF-8 still compares (and fails), never raises.
    return secret.encode("utf-8", "surrogatepass") if isinstance(secret, str) else secret


def secrets_match(given: str | bytes, expected: str | bytes) -> bool:
    """Whether ``given`` equals ``expected``, in constant time; an empty ``expected`` never matches."""
    expected_bytes = _key(expected)
    if not expected_bytes:
        return False
    return hmac.compare_digest(_key(given), expected_bytes)


# -- Shopify ---------------------------------------------------------------------------------------


def verify_shopify(secrets: Iterable[str | bytes], body: bytes, header: str | None) -> None:
    """Check a Shopify webhook's HMAC against each configured secret (current, previous).

    Raises:
      SignatureError: No header, or it matches none of the secrets.
    """
    if not header:
        raise SignatureError(f"missing {SHOPIFY_HMAC_HEADER} header")
    given = _key(header.strip())
    matched = False
    for secret in secrets:
        if _key(secret):
            # No early exit: every secret costs the same whether or not an earlier one matched.
            matched |= hmac.compare_digest(given, shopify_hmac(secret, body).encode())
    if not matched:
        raise SignatureError(f"{SHOPIFY_HMAC_HEADER} does not match the body")


# -- in-house producers ----------------------------------------------------------------------------


def producer_signature(key: str | bytes, body: bytes, timestamp: int | None = None) -> str:
    """The ``X-Stocksync-Signature`` value for ``body`` signed now (or at ``timestamp``)."""
    stamp = int(time.time() if timestamp is None else timestamp)
    return f"t={stamp},v1={_producer_digest(key, stamp, body)}"


def _producer_digest(key: str | bytes, timestamp: int, body: bytes) -> str:
    return hmac.new(_key(key), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def parse_signature_header(header: str) -> tuple[int, list[str]]:
    """``(timestamp, [v1 signatures])`` from ``t=...,v1=...[,v1=...]``.

    Raises:
      SignatureError: The header is not in that form.
    """
    timestamp: int | None = None
    signatures = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t":
            if not (value.isascii() and value.isdigit() and len(value) <= 12):
                raise SignatureError(f"{SIGNATURE_HEADER}: t must be unix seconds")
            timestamp = int(value)
        elif name == "v1" and value:
            signatures.append(value.lower())
    if timestamp is None or not signatures:
        raise SignatureError(f"{SIGNATURE_HEADER} must look like t=<unix seconds>,v1=<hex hmac-sha256>")
    return timestamp, signatures


def verify_producer(key: str | bytes, body: bytes, header: str | None, *, tolerance_s: float = DEFAULT_TOLERANCE_S,
                    now: float | None = None) -> int:
    """Check an in-house producer's signature; return its timestamp.

    Raises:
      SignatureError: Missing or malformed header, timestamp outside ``tolerance_s`` of ``now``
        (either way), or no ``v1`` matches.
    """
    if not _key(key):
        raise SignatureError("the signed endpoint has no key configured")
    if not header:
        raise SignatureError(f"missing {SIGNATURE_HEADER} header")
    timestamp, signatures = parse_signature_header(header)
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance_s:
        raise SignatureError(f"{SIGNATURE_HEADER} timestamp is more than {tolerance_s:g} s from the server's clock")
    expected = _producer_digest(key, timestamp, body).encode()
    matched = False
    for signature in signatures:
        matched |= hmac.compare_digest(_key(signature), expected)
    if not matched:
        raise SignatureError(f"{SIGNATURE_HEADER} does not match the body")
    return timestamp


# -- the read API ----------------------------------------------------------------------------------


def token_list(tokens: str) -> list[str]:
    """The tokens of a comma-separated setting (``READ_API_TOKENS``), blanks dropped."""
    return [token.strip() for token in tokens.split(",") if token.strip()]


def verify_bearer(tokens: Iterable[str], header: str | None) -> None:
    """Check ``Authorization: Bearer <token>`` against every configured token (old and new during a rotation).

    Raises:
      SignatureError: No header, not a bearer token, or it matches none of the tokens.
    """
    if not header:
        raise SignatureError(f"this needs an Authorization: {BEARER} <token> header (a token of READ_API_TOKENS)")
    scheme, _, given = header.strip().partition(" ")
    if scheme.lower() != BEARER.lower() or not given.strip():
        raise SignatureError(f"the Authorization header must be {BEARER} <token>")
    matched = False
    for token in tokens:
        # No early exit: every token costs the same whether or not an earlier one matched.
        matched |= secrets_match(given.strip(), token)
    if not matched:
        raise SignatureError("the bearer token is not valid")
