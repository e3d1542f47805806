"""Serve an aiohttp application on loopback: in a background thread or in the foreground.

Tests, the demo and the benchmarks call :func:`serve_in_thread`, which runs the application on its
own event loop in a daemon thread and returns once the socket accepts connections, so the caller's
thread (and its own event loop, if any) stays free.  The ``stocksync sandbox`` command calls
:func:`run_forever`, which blocks like :func:`aiohttp.web.run_app`.
"""
from __future__ import annotations

import asyncio
import contextlib
import threading
from types import TracebackType

from aiohttp import web

__all__ = ["RunningServer", "run_forever", "serve_in_thread"]

#: Loopback: the sandboxes have no authentication on their admin routes, so they never listen
#: on a public interface unless a caller asks for one explicitly.
DEFAULT_HOST = "127.0.0.1"

#: How long :meth:`RunningServer.stop` lets in-flight requests finish before cancelling them.
SHUTDOWN_TIMEOUT_S = 2.0

#: How long :func:`serve_in_thread` waits for the socket to be listening.
START_TIMEOUT_S = 30.0


class RunningServer:
    """An aiohttp application served by its own event loop in a daemon thread.

    Made by :func:`serve_in_thread`.  ``url`` is the base URL (``http://127.0.0.1:PORT``), ``port``
    the port actually bound.  :meth:`stop` shuts the server down cleanly (it runs the
    application's cleanup hooks); it is also called when leaving a ``with`` block.
    """

    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self._requested_port = port
        self._port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name=f"aiohttp-server-{host}:{port}", daemon=True)

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        if self._port is None:
            raise RuntimeError("the server is not listening")
        return self._port

    @property
    def url(self) -> str:
        """The server's base URL, without a trailing slash."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the serving thread is still alive."""
        return self._thread.is_alive()

    def start(self, timeout: float = START_TIMEOUT_S) -> RunningServer:
        """Start serving and return once the socket accepts connections.

        Raises:
          OSError: The address could not be bound (the error the event loop raised).
          TimeoutError: The server did not start within ``timeout`` seconds.
        """
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"the server on {self.host}:{self._requested_port} did not start in {timeout:g}s")
        if self._startup_error is not None:
            self._thread.join()
            raise self._startup_error
        return self

    def stop(self, timeout: float = SHUTDOWN_TIMEOUT_S + 5.0) -> None:
        """Stop serving, run the application's cleanup, and wait for the thread to end.

        Calling it again, or on a server that failed to start, does nothing.
        """
        loop = self._loop
        if loop is not None and self._thread.is_alive():
            try:
                loop.call_soon_threadsafe(loop.stop)
            except RuntimeError:
                pass  # The loop closed between the check and the call: already stopped.
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.url if self._port is not None else f"{self.host}:{self._requested_port}"
        return f"<RunningServer {where} {'running' if self.running else 'stopped'}>"

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        try:
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, self.host, self._requested_port)
            loop.run_until_complete(site.start())
            self._port = runner.addresses[0][1]
        except BaseException as error:  # Handed to the thread that called start().
            self._startup_error = error
            with contextlib.suppress(Exception):  # the startup error is the one worth reporting
                loop.run_until_complete(runner.cleanup())
            loop.close()
            self._ready.set()
            return
        self._loop = loop
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            # Closing the site and the application here, on the loop that owns them, is what
            # makes the shutdown clean: connections are closed and on_cleanup hooks run.
            loop.run_until_complete(runner.cleanup())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()


def serve_in_thread(app: web.Application, host: str = DEFAULT_HOST, port: int = 0) -> RunningServer:
    """Serve ``app`` on ``host:port`` (a free port when ``port`` is 0) from a daemon thread.

    Returns once the server accepts connections.  Stop it with :meth:`RunningServer.stop`, or use
    the returned object as a context manager.
    """
    return RunningServer(app, host, port).start()


def run_forever(app: web.Application, host: str = DEFAULT_HOST, port: int = 8780) -> None:
    """Serve ``app`` on ``host:port`` in the foreground until interrupted (Ctrl-C or SIGTERM)."""
    web.run_app(app, host=host, port=port, access_log=None, print=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
