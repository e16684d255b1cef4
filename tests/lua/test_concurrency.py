"""200 concurrent requests whose Python callbacks yield to other greenlets mid-script.

A lupa runtime entered by a second greenlet while the first one is suspended
inside it crashes (Lua 5.4) or mixes requests (LuaJIT). The filter holds a
runtime for one greenlet at a time; this proves it: every callback yields,
yet each request sees only its own metadata, scratch table and mutations, and
the script's shared state counts every request exactly once.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import gevent
import pytest

from metaproxy.chain import RequestContext
from metaproxy.lua.runtime import available_engines
from metaproxy.message import Metadata

N = 200

SCRIPT = """
served = 0
function on_request(h)
  local md = h:metadata()
  local id = md:get("request_id")
  h:log_info("start " .. id)
  h:scratch().id = id
  local user = md:get("x-user")
  for i = 1, 3 do h:log_info(id .. " step " .. i) end
  h:mutation():set("x-id", id)
  h:mutation():set("x-user-seen", user)
  served = served + 1
  h:mutation():set("x-served", served)
end
function on_response(h)
  h:log_info("response")
  h:mutation():set("x-scratch", h:scratch().id)
  h:mutation():set("x-response-id", h:metadata():get("request_id"))
end
"""


class YieldingMetadata(Metadata):
    """Metadata whose every read gives other greenlets a turn, and records who was inside."""

    inside = 0
    max_inside = 0
    yields = 0

    def get_str(self, key: str, default: Any = None) -> Any:
        cls = YieldingMetadata
        cls.inside += 1
        cls.max_inside = max(cls.max_inside, cls.inside)
        cls.yields += 1
        try:
            gevent.sleep(0)
            return super().get_str(key, default)
        finally:
            cls.inside -= 1


class YieldingHandler(logging.Handler):
    """A log handler doing cooperative I/O: it yields on every record."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.records += 1
        gevent.sleep(0)


@pytest.fixture
def yielding_logs():
    logger = logging.getLogger("metaproxy.lua")
    handler = YieldingHandler()
    old_level, old_propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old_level)
    logger.propagate = old_propagate


@pytest.mark.timeout(60)
@pytest.mark.parametrize("engine", available_engines())  # every engine: Lua 5.4 is the one that segfaulted
def test_200_concurrent_requests_with_yielding_callbacks(make_filter, engine, yielding_logs):
    YieldingMetadata.inside = YieldingMetadata.max_inside = YieldingMetadata.yields = 0
    f = make_filter(engine=engine, source=SCRIPT)
    rng = random.Random(5)
    results: dict[int, RequestContext] = {}

    def one(i: int) -> None:
        md = YieldingMetadata(request_id=i, method="ping", **{"x-user": f"user-{i}"})
        ctx = RequestContext(md, "in", "tinyrpc")
        assert f.on_request(ctx) is None
        gevent.sleep(rng.random() / 1000)  # the upstream round trip
        ctx.response_metadata = YieldingMetadata(request_id=i)
        f.on_response(ctx)
        results[i] = ctx

    jobs = [gevent.spawn(one, i) for i in range(N)]
    gevent.joinall(jobs, timeout=50, raise_error=True)
    assert len(results) == N
    for i, ctx in results.items():
        assert ctx.mutation["x-id"] == str(i)
        assert ctx.mutation["x-user-seen"] == f"user-{i}"
        assert ctx.response_mutation == {"x-scratch": str(i), "x-response-id": str(i)}
    assert sorted(int(ctx.mutation["x-served"]) for ctx in results.values()) == list(range(1, N + 1))
    assert f.error_counts == {}
    # The callbacks really yielded while greenlets were queued on the runtime...
    assert YieldingMetadata.yields >= 3 * N and yielding_logs.records == 5 * N
    # ...and no two greenlets were ever inside one runtime at the same time.
    assert YieldingMetadata.max_inside == 1


@pytest.mark.timeout(60)
def test_separate_scripts_run_concurrently_without_sharing_state(make_filter, engine, tmp_path, yielding_logs):
    (tmp_path / "a.lua").write_text(
        'function on_request(h) h:log_info("a"); h:mutation():set("a", h:metadata():get("request_id")) end\n')
    (tmp_path / "b.lua").write_text(
        'function on_request(h) h:log_info("b"); h:mutation():set("b", h:metadata():get("request_id")) end\n')
    first = make_filter(engine=engine, script="a.lua")
    second = make_filter(engine=engine, script="b.lua")
    done: list[RequestContext] = []

    def one(i: int) -> None:
        ctx = RequestContext(YieldingMetadata(request_id=i), "in", "tinyrpc")
        assert first.on_request(ctx) is None
        assert second.on_request(ctx) is None
        done.append(ctx)

    gevent.joinall([gevent.spawn(one, i) for i in range(N)], timeout=50, raise_error=True)
    assert len(done) == N
    assert all(ctx.mutation == {"a": str(ctx.metadata["request_id"]), "b": str(ctx.metadata["request_id"])}
               for ctx in done)
