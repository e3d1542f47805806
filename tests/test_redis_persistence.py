"""Redis runs with an append-only file fsynced every second (deploy/redis, supervisor, compose): a killed
Redis comes back with its queued messages."""
from __future__ import annotations

import configparser
import shutil
import subprocess

import redis
import yaml

from runtime.local_servers import free_port, wait_until
from tests.fleet import ROOT


def test_compose_and_supervisor_run_redis_with_the_aof_fsynced_every_second():
    command = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] == "everysec"
    parser = configparser.RawConfigParser()
    parser.read(ROOT / "deploy/supervisor/redis.conf")
    assert parser["program:redis"]["command"].endswith("/deploy/redis/redis.conf")


def test_a_killed_redis_comes_back_with_its_queued_messages(tmp_path):
    port = free_port()
    args = [shutil.which("redis-server"), str(ROOT / "deploy/redis/redis.conf"), "--port", str(port),
            "--dir", str(tmp_path), "--bind", "127.0.0.1"]

    def start() -> subprocess.Popen:
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_until(lambda: _pings(port), 15, what="redis-server")
        return process

    process = start()
    client = redis.Redis(port=port)
    try:
        assert client.config_get("appendonly")["appendonly"] == "yes"
        assert client.config_get("appendfsync")["appendfsync"] == "everysec"
        client.rpush("dramatiq:stock-fetch", "m1")
        client.hset("dramatiq:stock-fetch.msgs", "m1", b'{"page": 7}')
        # Within a second both writes are in the append-only file on disk (it is written in order: the
        # last one's bytes mean both; a key name alone matched the first write only); then the server dies hard.
        wait_until(lambda: any(b'{"page": 7}' in f.read_bytes() for f in (tmp_path / "appendonlydir").glob("*.aof")),
                   5, what="the writes in the AOF")
        process.kill()
        process.wait(10)
        process = start()
        assert client.lrange("dramatiq:stock-fetch", 0, -1) == [b"m1"]
        assert client.hget("dramatiq:stock-fetch.msgs", "m1") == b'{"page": 7}'
    finally:
        client.close()
        process.kill()
        process.wait(10)


def _pings(port: int) -> bool:
    try:
        return redis.Redis(port=port, socket_connect_timeout=0.2).ping()
    except redis.ConnectionError:
        return False
