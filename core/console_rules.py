"""Rules of the operator console's users: roles, names, passwords, who is asking (pure functions)."""
from __future__ import annotations

import ipaddress
import re

#: Roles from least to most: each may do what the ones before it may.
ROLES = ("viewer", "operator", "admin")

#: Shortest password accepted: long passphrases beat composition rules.
MIN_PASSWORD_CHARS = 12
MAX_PASSWORD_CHARS = 1024

_USERNAME = re.compile(r"[a-z0-9][a-z0-9._@-]{0,63}")


class UserRuleError(ValueError):
    """A username, role or password does not follow the rules; the message says which and why."""


def check_role(role: str) -> str:
    """``role`` if it is one of :data:`ROLES`."""
    if role not in ROLES:
        raise UserRuleError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    return role


def allows(role: str | None, needed: str) -> bool:
    """Whether a user with ``role`` may do what needs ``needed`` (an unknown role may do nothing)."""
    if role not in ROLES:
        return False
    return ROLES.index(role) >= ROLES.index(check_role(needed))


def check_username(username: str) -> str:
    """``username`` if it is 1-64 of a-z, 0-9, ``.``, ``_``, ``@``, ``-`` (lower case: one spelling per person)."""
    if not isinstance(username, str) or not _USERNAME.fullmatch(username):
        raise UserRuleError("username must be 1-64 characters of a-z, 0-9, '.', '_', '@' or '-', starting with a "
                            "letter or digit")
    return username


def check_password(password: str) -> str:
    """``password`` if it is long enough (the password itself never appears in the error)."""
    if not isinstance(password, str) or len(password) < MIN_PASSWORD_CHARS:
        raise UserRuleError(f"password must be at least {MIN_PASSWORD_CHARS} characters")
    if len(password) > MAX_PASSWORD_CHARS:
        raise UserRuleError(f"password must be at most {MAX_PASSWORD_CHARS} characters")
    return password


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(text: str) -> tuple[Network, ...]:
    """Comma-separated CIDRs (``10.0.0.0/8, 192.0.2.7``) as networks; ValueError names a bad entry."""
    networks = []
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(f"{entry[:60]!r} is not an IP address or a CIDR network (like 10.0.0.0/8)") from None
    return tuple(networks)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    # A dual-stack socket shows an IPv4 peer as ::ffff:a.b.c.d: one client, one spelling.
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped or address


def _trusted(address, trusted: tuple[Network, ...]) -> bool:
    return address is not None and any(address in network for network in trusted)


def client_address(peer: str | None, forwarded_for: list[str], trusted: tuple[Network, ...]) -> str:
    """Who is asking: the peer, unless it is a trusted proxy; then the right-most ``X-Forwarded-For``
    entry that is not a trusted proxy itself.

    Each proxy appends the address it was connected from, so entries left of the first untrusted one
    (walking from the right) were written by the client and prove nothing.  ``forwarded_for``: every
    ``X-Forwarded-For`` header's value, in order.
    """
    peer_ip = _ip(peer or "")
    if not _trusted(peer_ip, trusted):
        return str(peer_ip) if peer_ip is not None else (peer or "?")[:64]
    entries = [entry.strip() for value in forwarded_for for entry in value.split(",") if entry.strip()]
    client = str(peer_ip)
    for entry in reversed(entries):
        address = _ip(entry)
        if address is None:
            return entry[:64]  # a trusted proxy wrote something else (``unknown``): keep it as it is
        client = str(address)
        if not _trusted(address, trusted):
            return client
    return client  # every hop trusted: the left-most one asked


#: Every reference an operator types is booked under this prefix; no other channel may use it.
CONSOLE_REFERENCE_PREFIX = "console:"


def console_reference(typed: str) -> str:
    """The ledger reference of what an operator typed (a form, a goods-received file): in the console's own
    namespace (once, so that a reference copied from the ledger names the same event)."""
    typed = typed.strip()
    return typed if typed.startswith(CONSOLE_REFERENCE_PREFIX) else CONSOLE_REFERENCE_PREFIX + typed
