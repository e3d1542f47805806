"""The rules an account must meet before the fleet sends anything anywhere in its name (pure functions).

An account's credential is the NAME of an environment variable under one fixed prefix (or, for a main
account, its platform's own setting), so a console user who adds an account can never make a worker
read a setting of the fleet's own (``DATABASE_URL``, a webhook secret) and send it away.  Its base URL
is https on the platform's own hosts; the loopback sandboxes only where a setting allows them.
"""
from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from core.platforms import Platform

#: Every account credential variable starts with this (e.g. ``STOCKSYNC_ACCOUNT_SHOP_EU_TOKEN``).
CREDENTIAL_PREFIX = "STOCKSYNC_ACCOUNT_"

#: Account codes: also the stock rows' marketplace code, the sync target and the metrics label.
CODE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")

_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
_LOOPBACK_NAMES = {"localhost"}


class AccountError(ValueError):
    """An account that cannot be added or used as asked (permanent).  Never holds a credential."""

    permanent = True


def check_code(code: str) -> str:
    """``code`` if it can name an account; a clear error otherwise."""
    if not isinstance(code, str) or not CODE.match(code):
        raise AccountError(f"account code {str(code)[:80]!r} refused: use 1-64 of a-z, 0-9, '_' and '-', starting "
                           f"with a letter or digit")
    return code


def check_credentials_env(name: str | None, platform: Platform) -> str | None:
    """``name`` if an account of ``platform`` may read its credential from it (``None``: the default).

    The error never repeats ``name`` when it does not look like a variable name: it may be the secret.
    """
    if name is None:
        return None
    if not isinstance(name, str) or not _ENV_NAME.match(name):
        raise AccountError("the credential must be given as the NAME of an environment variable (A-Z, 0-9 and _), "
                           "never as the secret itself")
    if name != platform.default_credential and (not name.startswith(CREDENTIAL_PREFIX)
                                                or len(name) == len(CREDENTIAL_PREFIX)):
        raise AccountError(f"credential variable {name} refused: an account's credential variable must start with "
                           f"{CREDENTIAL_PREFIX} (e.g. {CREDENTIAL_PREFIX}SHOP_EU_TOKEN), so no setting of the "
                           f"fleet's own can be sent to a marketplace")
    return name


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine (``localhost``, 127.0.0.0/8, ::1)."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_base_url(url: str | None, platform: Platform, *, allow_loopback: bool = False) -> str | None:
    """``url`` (without a trailing slash) if the fleet may send ``platform``'s credential there.

    https on one of the platform's own hosts; http or https on loopback only with ``allow_loopback``
    (the sandboxes).  No user info, query or fragment.
    """
    if url is None:
        return None
    parts = urlsplit(url) if isinstance(url, str) else None
    host = (parts.hostname or "") if parts else ""
    if parts is None or not host or parts.username or parts.password or parts.query or parts.fragment:
        raise AccountError(f"base URL {str(url)[:120]!r} refused: expected https://host[:port][/path]")
    if is_loopback(host):
        if not allow_loopback or parts.scheme not in ("http", "https"):
            raise AccountError(f"base URL {url!r} refused: loopback hosts (the sandboxes) are allowed only with "
                               f"ACCOUNTS_ALLOW_LOOPBACK=true")
    elif parts.scheme != "https" or not platform.allows_host(host):
        hosts = ", ".join(h.lstrip(".") for h in platform.hosts[:4]) or "none"
        raise AccountError(f"base URL {url!r} refused: {platform.title} credentials go only over https to "
                           f"{platform.title}'s own hosts ({hosts}, ...)")
    return url.rstrip("/")


#: The most Shopify locations an account may sum (each is a level in every catalogue query: cost grows with them).
MAX_SHOP_LOCATIONS = 10

#: The options an account may have, and what each must be.
OPTIONS = {
    "restock_on_cancel": ("true or false: whether a cancelled order gives its units back on the marketplace by itself "
                          "(the default: a marketplace's word on one cancellation, Shopify's refund lines, wins)"),
    "webhook_secret_env": f"the NAME of the variable holding its webhook secret ({CREDENTIAL_PREFIX}...)",
    "shop_domain": "the shop's myshopify.com domain (Shopify webhooks name it)",
    "location_id": "the Shopify location id whose stock is counted and pushed (instead of location_ids)",
    "location_ids": f"a list of 1 to {MAX_SHOP_LOCATIONS} Shopify location ids whose stock is summed; pushes go to "
                    "the first (default: every active location)",
    "language": "the Back Market language of its listings (e.g. fr-fr)",
}


def check_options(options: Mapping[str, Any], platform: Platform) -> dict[str, Any]:
    """``options`` as a dict if each is one an account of ``platform`` may have, with a value of its kind."""
    checked = {}
    for key, value in options.items():
        if key not in OPTIONS:
            raise AccountError(f"unknown option {str(key)[:40]!r}: expected one of {', '.join(OPTIONS)}")
        ok = {"restock_on_cancel": isinstance(value, bool),
              "webhook_secret_env": isinstance(value, str),
              "shop_domain": isinstance(value, str) and platform.allows_host(value) and "/" not in value,
              "location_id": _location(value),
              "location_ids": isinstance(value, list) and 1 <= len(value) <= MAX_SHOP_LOCATIONS
              and all(_location(v) for v in value),
              "language": isinstance(value, str) and re.fullmatch(r"[a-z]{2}-[a-z]{2}", value) is not None}[key]
        if not ok:
            raise AccountError(f"option {key}: expected {OPTIONS[key]}")
        if key == "webhook_secret_env" and (value == platform.default_credential
                                            or check_credentials_env(value, platform) is None):
            raise AccountError(f"option {key}: expected {OPTIONS[key]}")
        checked[key] = value
    if "location_id" in checked and "location_ids" in checked:
        raise AccountError("options location_id and location_ids: give one of them (one location, or several summed)")
    return checked


def _location(value: Any) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool) and str(value).isdigit() and int(value) > 0


def shop_locations(options: Mapping[str, Any]) -> list[str] | None:
    """The Shopify locations an account counts (``location_id`` or ``location_ids``, as numbers), or None: every active one."""
    if options.get("location_id") is not None:
        return [str(options["location_id"])]
    return [str(location) for location in options["location_ids"]] if options.get("location_ids") else None


__all__ = ["AccountError", "CODE", "CREDENTIAL_PREFIX", "OPTIONS", "check_base_url", "check_code",
           "check_credentials_env", "check_options", "is_loopback", "shop_locations"]
