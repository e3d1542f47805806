"""Webhook signatures as the vendors make them: one definition for the intake that checks them and
the sandboxes that sign.
"""
from __future__ import annotations

import base64
import hashlib
import hmac

__all__ = ["shopify_hmac"]


def shopify_hmac(secret: str | bytes, body: bytes) -> str:
    """``X-Shopify-Hmac-Sha256`` for ``body``: base64 of HMAC-SHA256 keyed with the app's secret."""
    # surrogatepass: a secret that was not UTF-8 still signs (and fails to match), never raises.
    key = secret.encode("utf-8", "surrogatepass") if isinstance(secret, str) else secret
    return base64.b64encode(hmac.new(key, body, hashlib.sha256).digest()).decode()
