"""Redis clients (redis-py, redis-cli) through metaproxy to real redis-servers."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import redis

pytestmark = pytest.mark.slow


@pytest.fixture
def two_redis(redis_server, proxy):
    users, rest = redis_server(), redis_server()
    config = {
        "listeners": [{
            "name": "redis-in",
            "address": "127.0.0.1:0",
            "protocol": {"codec": "redis"},
            "route_config": {"name": "redis", "routes": [
                {"name": "users", "match": {"metadata": [{"name": "key", "prefix": "user:"}]},
                 "route": {"cluster": "users"}},
                {"name": "nowhere", "match": {"metadata": [{"name": "key", "prefix": "lost:"}]},
                 "route": {"cluster": "missing"}},
                {"name": "others", "match": {"metadata": [{"name": "key", "prefix": "forbidden:"},
                                                          {"name": "key", "present": True, "invert": True}]},
                 "route": {"cluster": "rest"}},
                {"name": "default", "match": {"metadata": [{"name": "key", "prefix": "lost:", "invert": True},
                                                           {"name": "command", "regex": "[A-Z]+"}]},
                 "route": {"cluster": "rest"}},
            ]},
        }],
        "clusters": [{"name": "users", "endpoints": [f"127.0.0.1:{users}"]},
                     {"name": "rest", "endpoints": [f"127.0.0.1:{rest}"]}],
    }
    p = proxy(config)
    host, port = p.address()
    return redis.Redis(host=host, port=port, socket_timeout=10), users, rest, p


def test_strings_and_hashes_route_by_key_prefix(two_redis):
    client, users_port, rest_port, _ = two_redis
    assert client.set("user:1", "alice")
    assert client.get("user:1") == b"alice"
    assert client.set("other", "x")
    assert client.hset("user:h", mapping={"a": "1", "b": "2"}) == 2
    assert client.hgetall("user:h") == {b"a": b"1", b"b": b"2"}
    users = redis.Redis(port=users_port)
    rest = redis.Redis(port=rest_port)
    assert users.get("user:1") == b"alice" and rest.get("user:1") is None
    assert rest.get("other") == b"x" and users.get("other") is None


def test_pipeline_of_100_commands_keeps_order(two_redis):
    client = two_redis[0]
    pipe = client.pipeline(transaction=False)
    for i in range(100):
        pipe.set(f"user:p{i}", i)
        pipe.get(f"user:p{i}")
    results = pipe.execute()
    assert results[1::2] == [str(i).encode() for i in range(100)]


def test_multi_exec_on_one_connection(two_redis):
    # MULTI and EXEC carry no key, so they follow the keyless route ("rest"): a transaction
    # works when its keys route to that same cluster (docs/redis.md says so).
    client = two_redis[0]
    pipe = client.pipeline(transaction=True)
    pipe.set("txn", "1").incr("txn").get("txn")
    assert pipe.execute() == [True, 2, b"2"]


def test_big_value_of_1_mib(two_redis):
    client = two_redis[0]
    value = bytes(range(256)) * 4096
    assert client.set("user:big", value)
    assert client.get("user:big") == value


def test_server_errors_pass_through_and_route_not_found_is_err(two_redis):
    client = two_redis[0]
    client.set("user:s", "text")
    with pytest.raises(redis.ResponseError, match="not an integer"):
        client.incr("user:s")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        client.hget("user:s", "field")
    with pytest.raises(redis.ResponseError, match="metaproxy: no such cluster"):
        client.get("lost:1")
    with pytest.raises(redis.ResponseError, match="streams are not supported"):
        client.execute_command("SUBSCRIBE", "news")
    assert client.ping()


def test_redis_cli_through_the_proxy(two_redis):
    _, _, _, p = two_redis
    cli = shutil.which("redis-cli")
    assert cli, "redis-cli is missing: `make deps-apt` installs redis-tools"
    host, port = p.address()
    run = lambda *args: subprocess.run([cli, "-h", host, "-p", str(port), *args],  # noqa: E731
                                       capture_output=True, text=True, timeout=20)
    assert run("SET", "user:cli", "hello").stdout.strip() == "OK"
    assert run("GET", "user:cli").stdout.strip() == "hello"
    assert "no such cluster" in run("GET", "lost:x").stdout


def test_pipeline_across_two_clusters_keeps_client_order(two_redis):
    client = two_redis[0]
    pipe = client.pipeline(transaction=False)
    for i in range(50):
        pipe.set(f"user:o{i}", f"u{i}").set(f"o{i}", f"r{i}")
        pipe.append(f"user:o{i}", "!").get(f"user:o{i}").get(f"o{i}")
    results = pipe.execute()
    for i in range(50):
        assert results[5 * i:5 * i + 5] == [True, True, len(f"u{i}!"), f"u{i}!".encode(), f"r{i}".encode()]


def test_pipelines_share_one_upstream_connection_per_client(two_redis):
    client, users_port, _, _ = two_redis
    users = redis.Redis(port=users_port)
    before = users.info("clients")["connected_clients"]
    for _ in range(5):
        pipe = client.pipeline(transaction=False)
        for _ in range(64):
            pipe.incr("user:count")
        assert pipe.execute()[-1] % 64 == 0
    assert users.info("clients")["connected_clients"] - before <= 1
