"""The SKU page of this tree against another checkout's, on the same machine at the same moments.

    .venv/bin/python bench/timeline_ab.py OTHER_CHECKOUT [--requests 200] [--variations 20000]
                                          [--ledger-rows 10000] [--read-hours 8760]

``bench/timeline.py`` run twice, one tree after the other, compares two moments of a shared machine
(its load moved by a third on this one between two runs).  Here both trees' consoles serve at once,
each in its own process on its own database (each migrated by its own tree, seeded alike by
``bench.timeline.seed``), and each request goes to one then the other, in alternating order, so both
see the same load.  ``OTHER_CHECKOUT`` needs the same ``bench/timeline.py --serve`` (e.g. a ``git
worktree add /tmp/main main``); it runs with this venv.  The five views of ``bench/timeline.py``; each
server's garbage collections and the load average are printed.
"""
from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.console import DURABLE, PASSWORD, log_in, percentiles  # noqa: E402
from bench.timeline import SKU, ServerProcess, load, seed  # noqa: E402
from db import users  # noqa: E402
from db.engine import session_factory  # noqa: E402
from runtime.local_servers import PostgresServer, RedisServer  # noqa: E402


def migrate(tree: Path, url: str) -> None:
    """``tree``'s migrations on ``url`` (its own ``db.migrate``, in a process of its own)."""
    subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(tree)!r}); "
                    f"from db.migrate import upgrade; upgrade({url!r})"], cwd=tree, check=True)


async def logged_in(base: str) -> aiohttp.ClientSession:
    client = aiohttp.ClientSession(base_url=base, cookie_jar=aiohttp.CookieJar(unsafe=True))
    await log_in(client)
    return client


async def alternate(servers: dict[str, ServerProcess], views: dict, requests: int) -> dict[tuple, list[float]]:
    """Each view ``requests`` times (after 20 warm-up ones) on every server, one request each in turn."""
    clients = {name: await logged_in(server.url) for name, server in servers.items()}
    samples: dict[tuple, list[float]] = {}
    try:
        for view, (path, first_view) in views.items():
            for index in range(requests + 20):
                order = list(servers) if index % 2 == 0 else list(reversed(servers))
                for name in order:
                    if first_view:
                        servers[name].forget()
                    started = time.perf_counter()
                    async with clients[name].get(path(index) if callable(path) else path) as response:
                        await response.read()
                        assert response.status == 200, (name, view, response.status)
                    if index >= 20:
                        samples.setdefault((view, name), []).append(time.perf_counter() - started)
    finally:
        for client in clients.values():
            await client.close()
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("other", type=Path, help="the other checkout (its bench/timeline.py serves its console)")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--variations", type=int, default=20_000)
    parser.add_argument("--ledger-rows", type=int, default=10_000)
    parser.add_argument("--read-hours", type=int, default=365 * 24)
    args = parser.parse_args()
    trees = {"this tree": ROOT, f"other ({args.other})": args.other.resolve()}
    with tempfile.TemporaryDirectory(prefix="stocksync-bench-timeline-ab-") as folder:
        pg = PostgresServer(Path(folder) / "pg", options=DURABLE).start()
        redis_server = RedisServer(Path(folder) / "redis").start()
        servers: dict[str, ServerProcess] = {}
        try:
            for number, (name, tree) in enumerate(trees.items()):
                database = f"bench_ab_{number}"
                url = pg.create_database(database)
                migrate(tree, url)
                variation_id = seed(pg, database, args.variations, args.ledger_rows, args.read_hours)
                with session_factory(url)() as session:
                    users.add_user(session, "bench", PASSWORD, "viewer")
                    session.commit()
                servers[name] = ServerProcess(url, redis_server.url, script=str(tree / "bench" / "timeline.py"))
            print(f"load average (uptime) at the start: {load()}")
            print(f"each: {args.variations} variations on 2 accounts; {SKU}: {args.ledger_rows} ledger rows over a year, "
                  f"{args.read_hours} reads on each account; requests alternate between the two servers")
            path = f"/variations/{variation_id}"
            half_year = time.time() - 182 * 86400

            def as_of(moment: float) -> str:
                return f"{path}?as_of={time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(moment))}"

            views = {"as of now (repeated)": (path, False), "as of half a year ago (repeated)": (as_of(half_year), False),
                     "a different moment each request": (lambda i: as_of(half_year - 3607 * i), False),
                     "first view, as of now": (path, True), "first view, as of half a year ago": (as_of(half_year), True)}
            results = asyncio.run(alternate(servers, views, args.requests))
            for view in views:
                for name in servers:
                    print(f"{view}, {name}: {percentiles(results[(view, name)])}")
            for name, server in list(servers.items()):
                print(f"{name}, garbage collections: {server.stop()}")
                del servers[name]
            print(f"load average (uptime) at the end: {load()}")
        finally:
            for server in servers.values():
                server.stop()
            redis_server.stop()
            pg.stop()


if __name__ == "__main__":
    main()
