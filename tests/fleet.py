"""Start real ``dramatiq`` worker processes (``dramatiq workers.fleet``) for end-to-end tests."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class WorkerFleet:
    """One ``dramatiq`` master with its worker processes, started in its own process group."""

    env: dict[str, str]
    processes: int = 1
    threads: int = 8
    log_path: Path | None = None
    queues: tuple[str, ...] = ()
    process: subprocess.Popen | None = field(default=None, init=False)

    def start(self) -> "WorkerFleet":
        """Start ``python -m dramatiq workers.fleet`` with our environment."""
        command = [sys.executable, "-m", "dramatiq", "workers.fleet", "--processes", str(self.processes),
                   "--threads", str(self.threads), "--worker-shutdown-timeout", "5000"]
        if self.queues:
            command += ["--queues", *self.queues]
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **self.env}, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def kill(self) -> None:
        """SIGKILL the master and its workers at once: no chance to ack or requeue anything."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        """Graceful stop (SIGTERM lets workers finish their messages), SIGKILL after 20 s."""
        if self.process and self.process.poll() is None:
            # Only the master: it forwards SIGTERM to its workers, and a second signal would make
            # them stop hard.
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


def fleet_env(*, redis_url: str, database_url: str, backmarket_url: str, token: str, quota_requests: int = 0,
              quota_window_s: float = 1.0, **extra: str) -> dict[str, str]:
    """Environment for worker processes talking to our Redis, PostgreSQL and sandbox."""
    env = {
        "REDIS_URL": redis_url, "DATABASE_URL": database_url, "BACKMARKET_BASE_URL": backmarket_url,
        "BACKMARKET_TOKEN": token, "BACKMARKET_QUOTA_REQUESTS": str(quota_requests or 1_000_000),
        "BACKMARKET_QUOTA_WINDOW_S": str(quota_window_s), "BACKMARKET_PENALTY_S": "1",
        "DRAMATIQ_HEARTBEAT_TIMEOUT_MS": "3000", "DRAMATIQ_MAINTENANCE_CHANCE": "100000",
        "dramatiq_prom_db": "", "PYTHONUNBUFFERED": "1",
        # No /metrics server unless a test asks for one (metrics_port=...): fleets of tests running
        # side by side would all want the default port.
        "METRICS_PORT": "0",
    }
    env.update({k.upper(): str(v) for k, v in extra.items()})
    return env


def seed_catalogue(sessions, listings: list[dict], marketplace: str = "backmarket", name: str = "Back Market",
                   publication_state: int | None = 2) -> None:
    """The catalogue as a stock sync of ``marketplace`` left it an hour ago, so events have rows to book on.

    ``listings``: the sandbox's listings (Back Market's ``listing(i)``), or items of the pipeline's
    message form (``id``, ``sku``, ``title``, ``quantity``; a Refurbed offer's).
    """
    from datetime import datetime, timedelta, timezone

    from db.snapshot import PageItem, apply_page, ensure_marketplace
    from db.syncs import SyncPolicy, begin_run

    with sessions() as session:
        marketplace_id = ensure_marketplace(session, marketplace, name)
        session.commit()
        run = begin_run(session, kind="stock", target=marketplace, trigger="manual", policy=SyncPolicy(0, 0, 900))
        apply_page(session, marketplace_id=marketplace_id, sync_id=run.id, page=1,
                   fetched_at=datetime.now(timezone.utc) - timedelta(hours=1), total_pages=1,
                   items=[PageItem(l["id"], l.get("listing_id"), l["sku"], l["title"], l["quantity"], publication_state,
                                   l.get("price"), l.get("currency")) for l in listings])
        session.commit()
