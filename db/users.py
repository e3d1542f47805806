"""Operator console users, their server-side sessions and the audit of what they did.

Passwords are kept as argon2id hashes (argon2-cffi's defaults).  A session is a random token in
the user's cookie; the table keeps only its SHA-256, a fixed expiry and the session's CSRF token.
Functions do not commit, except where they say so.
"""
from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import text
from sqlalchemy.orm import Session

from core.console_rules import UserRuleError, check_password, check_role, check_username

_hasher = PasswordHasher()
#: Verified when the account does not exist, so a wrong name takes as long as a wrong password.
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))


class UserError(ValueError):
    """A user operation was refused: an unknown or duplicate user, or a rule broken (the message says)."""


@dataclass(frozen=True)
class User:
    """A console user as the pages and the CLI show it (never the hash)."""

    id: int
    username: str
    role: str
    active: bool
    created_at: datetime
    last_login_at: datetime | None


@dataclass(frozen=True)
class SessionInfo:
    """A live session: whose it is, the user's current role, its CSRF token and when it ends."""

    user_id: int
    username: str
    role: str
    csrf_token: str
    expires_at: datetime


@dataclass(frozen=True)
class AuditEntry:
    """One audited console action."""

    id: int
    at: datetime
    username: str | None
    action: str
    arguments: dict
    outcome: str
    detail: str | None
    address: str | None


def hash_password(password: str) -> str:
    """An argon2id hash of ``password`` (after the length rules)."""
    try:
        return _hasher.hash(check_password(password))
    except UserRuleError as error:
        raise UserError(str(error)) from None


def _user(row) -> User:
    return User(id=row.id, username=row.username, role=row.role, active=row.active, created_at=row.created_at,
                last_login_at=row.last_login_at)


_USER_COLUMNS = "SELECT id, username, role, active, created_at, last_login_at FROM console_users "


def add_user(session: Session, username: str, password: str, role: str = "viewer") -> User:
    """Create a user (active).  Raises :class:`UserError` for a taken name or a broken rule."""
    try:
        check_username(username)
        check_role(role)
    except UserRuleError as error:
        raise UserError(str(error)) from None
    row = session.execute(text(
        "INSERT INTO console_users (username, password_hash, role) VALUES (:u, :h, :r) "
        "ON CONFLICT (username) DO NOTHING RETURNING id, username, role, active, created_at, last_login_at"),
        {"u": username, "h": hash_password(password), "r": role}).first()
    if row is None:
        raise UserError(f"user {username!r} exists already")
    return _user(row)


def list_users(session: Session) -> list[User]:
    """Every user, by name."""
    return [_user(row) for row in session.execute(text(_USER_COLUMNS + "ORDER BY username"))]


def get_user(session: Session, username: str) -> User:
    """User ``username``, or :class:`UserError`."""
    row = session.execute(text(_USER_COLUMNS + "WHERE username = :u"), {"u": username}).first()
    if row is None:
        raise UserError(f"no user {username!r} (see `stocksync users list`)")
    return _user(row)


def _update(session: Session, username: str, assignments: str, params: dict[str, Any]) -> User:
    row = session.execute(text(f"UPDATE console_users SET {assignments}, updated_at = now() WHERE username = :u "
                               "RETURNING id, username, role, active, created_at, last_login_at"),
                          {"u": username, **params}).first()
    if row is None:
        raise UserError(f"no user {username!r} (see `stocksync users list`)")
    return _user(row)


def set_role(session: Session, username: str, role: str) -> User:
    """Give ``username`` another role (effective on its next request: sessions read the role live)."""
    try:
        check_role(role)
    except UserRuleError as error:
        raise UserError(str(error)) from None
    return _update(session, username, "role = :r", {"r": role})


def set_active(session: Session, username: str, active: bool) -> User:
    """Enable or disable ``username``; disabling ends its sessions."""
    user = _update(session, username, "active = :a", {"a": active})
    if not active:
        session.execute(text("DELETE FROM console_sessions WHERE user_id = :id"), {"id": user.id})
    return user


def set_password(session: Session, username: str, password: str) -> User:
    """Replace ``username``'s password and end its sessions (whoever knew the old one is logged out)."""
    user = _update(session, username, "password_hash = :h", {"h": hash_password(password)})
    session.execute(text("DELETE FROM console_sessions WHERE user_id = :id"), {"id": user.id})
    return user


def authenticate(session: Session, username: str, password: str) -> User | None:
    """The active user ``username`` if ``password`` is theirs, else None (same work either way)."""
    row = session.execute(text("SELECT id, username, role, active, created_at, last_login_at, password_hash "
                               "FROM console_users WHERE username = :u"), {"u": username}).first()
    try:
        _hasher.verify(row.password_hash if row is not None else _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        return None
    if row is None or not row.active:
        return None
    if _hasher.check_needs_rehash(row.password_hash):
        session.execute(text("UPDATE console_users SET password_hash = :h WHERE id = :id"),
                        {"h": _hasher.hash(password), "id": row.id})
    return _user(row)


# -- sessions ----------------------------------------------------------------------------------------


def token_hash(token: str) -> str:
    """What the sessions table keeps of a session token."""
    return hashlib.sha256(token.encode()).hexdigest()


def create_session(session: Session, user_id: int, lifetime_s: float, *, address: str | None = None,
                   now: datetime | None = None) -> tuple[str, SessionInfo]:
    """Open a new session for ``user_id`` (a new random id every login); return its token and info."""
    now = now or datetime.now(timezone.utc)
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    expires = now + timedelta(seconds=lifetime_s)
    session.execute(text("INSERT INTO console_sessions (token_hash, user_id, csrf_token, created_at, expires_at, "
                         "address) VALUES (:t, :u, :c, :now, :e, :a)"),
                    {"t": token_hash(token), "u": user_id, "c": csrf, "now": now, "e": expires,
                     "a": (address or "")[:64] or None})
    session.execute(text("UPDATE console_users SET last_login_at = :now WHERE id = :u"), {"now": now, "u": user_id})
    # Old sessions of anyone are of no use once expired.
    session.execute(text("DELETE FROM console_sessions WHERE expires_at < :now"), {"now": now})
    row = session.execute(text("SELECT username, role FROM console_users WHERE id = :u"), {"u": user_id}).one()
    return token, SessionInfo(user_id=user_id, username=row.username, role=row.role, csrf_token=csrf,
                              expires_at=expires)


def load_session(session: Session, token: str, now: datetime | None = None) -> SessionInfo | None:
    """The live session of ``token`` with its user's current role; None if unknown, expired or disabled."""
    row = session.execute(text(
        "SELECT s.user_id, u.username, u.role, s.csrf_token, s.expires_at FROM console_sessions s "
        "JOIN console_users u ON u.id = s.user_id WHERE s.token_hash = :t AND s.expires_at > :now AND u.active"),
        {"t": token_hash(token), "now": now or datetime.now(timezone.utc)}).first()
    return SessionInfo(**row._mapping) if row is not None else None


def delete_session(session: Session, token: str) -> None:
    """End the session of ``token`` (logout)."""
    session.execute(text("DELETE FROM console_sessions WHERE token_hash = :t"), {"t": token_hash(token)})


# -- audit -------------------------------------------------------------------------------------------


def record_audit(session: Session, *, username: str | None, action: str, arguments: dict[str, Any],
                 outcome: str, detail: str | None = None, address: str | None = None) -> int:
    """Append one audit entry; return its id."""
    # PostgreSQL text holds no NUL: a hostile form's NUL is audited as the escape "\\x00" (and JSON's
    # "\\u0000" is refused by jsonb, so arguments are escaped before they are encoded).
    arguments = {_storable(str(key)): _storable(value) if isinstance(value, str) else value
                 for key, value in arguments.items()}
    return session.execute(text(
        "INSERT INTO console_audit (username, action, arguments, outcome, detail, address) "
        "VALUES (:u, :a, CAST(:args AS jsonb), :o, :d, :addr) RETURNING id"),
        {"u": _storable(username), "a": action, "args": json.dumps(arguments, default=str), "o": outcome,
         "d": _storable(detail[:2000]) if detail else None,
         "addr": _storable((address or "")[:64]) or None}).scalar_one()


def _storable(value: str | None) -> str | None:
    return value.replace("\x00", "\\x00") if value else value


def list_audit(session: Session, *, before_id: int | None = None, limit: int = 50, username: str | None = None,
               action: str | None = None) -> list[AuditEntry]:
    """Audit entries newest first, ``limit`` of them older than ``before_id``, optionally of one user or action."""
    rows = session.execute(text(
        "SELECT id, at, username, action, arguments, outcome, detail, address FROM console_audit "
        "WHERE (CAST(:before AS bigint) IS NULL OR id < :before) AND (CAST(:u AS text) IS NULL OR username = :u) "
        "AND (CAST(:a AS text) IS NULL OR action = :a) ORDER BY id DESC LIMIT :limit"),
        {"before": before_id, "u": username, "a": action, "limit": limit})
    return [AuditEntry(**row._mapping) for row in rows]


__all__ = ["AuditEntry", "SessionInfo", "User", "UserError", "add_user", "authenticate", "create_session",
           "delete_session", "get_user", "hash_password", "list_audit", "list_users", "load_session",
           "record_audit", "set_active", "set_password", "set_role", "token_hash"]
