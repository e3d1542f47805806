"""Rules of the operator console's users: roles, names, passwords, login throttling (pure functions)."""
from __future__ import annotations

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


def login_refused(account_failures: int, address_failures: int, *, max_per_account: int,
                  max_per_address: int) -> str | None:
    """Why a login is refused before its password is even checked (None: let it try).

    Counts are failed attempts within the current window; reaching the limit blocks the next ones,
    so a guesser gets ``max_per_account`` tries per account and window, whatever the address.
    """
    if account_failures >= max_per_account:
        return "too many failed logins for this account"
    if address_failures >= max_per_address:
        return "too many failed logins from this address"
    return None
