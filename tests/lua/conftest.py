"""Shared helpers for the Lua filter tests: build a filter, make a request context, pick engines."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from metaproxy.chain import FilterEnv, RequestContext
from metaproxy.lua.filter import LuaFilter
from metaproxy.lua.runtime import available_engines
from metaproxy.message import Metadata

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "filters" / "lua"

#: LuaJIT (the default where lupa has it) and the newest PUC Lua: their hooks and allocators differ.
ENGINES = [e for e in available_engines() if e.startswith("luajit")][:1] + \
          [e for e in available_engines() if not e.startswith("luajit")][:1]


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def make_filter(tmp_path: Path):
    """make_filter(**options) -> LuaFilter with base_dir=tmp_path; closed after the test."""
    made: list[LuaFilter] = []

    def make(base_dir: str | os.PathLike[str] | None = None, services: dict[str, Any] | None = None,
             **options: Any) -> LuaFilter:
        env = FilterEnv(listener="in", protocol="tinyrpc", base_dir=str(base_dir or tmp_path),
                        services=services or {})
        f = LuaFilter(options, env)
        made.append(f)
        return f

    yield make
    for f in made:
        f.close()


def ctx_for(**metadata: Any) -> RequestContext:
    """A request context whose metadata holds ``metadata`` (underscores in keys become dashes)."""
    md = Metadata({k.replace("_", "-") if k.startswith("x_") else k: v for k, v in metadata.items()})
    return RequestContext(md, "in", "tinyrpc")


def respond(f: LuaFilter, ctx: RequestContext, **metadata: Any) -> None:
    """Give ``ctx`` an upstream response and run the filter's response path."""
    ctx.response_metadata = Metadata(metadata)
    f.on_response(ctx)


def write_atomic(path: Path, text: str) -> None:
    """Replace a script the way a deploy does (new inode), so the change is always visible."""
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
