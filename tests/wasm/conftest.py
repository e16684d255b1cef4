"""Helpers for the WASM filter tests: the committed samples, WAT-built modules, request contexts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import wasmtime

from metaproxy.chain import FilterEnv, RequestContext
from metaproxy.message import MessageType, Metadata
from metaproxy.wasm.filter import WasmFilter

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "filters" / "wasm"


def sample(name: str) -> str:
    return str(SAMPLES / f"{name}.wasm")


def request(method: str = "ping", request_id: int = 7, **headers: Any) -> RequestContext:
    md = Metadata(request_id=request_id, message_type=MessageType.REQUEST, service="demo", method=method)
    md.update(headers)
    return RequestContext(md, "in", "tinyrpc")


def respond(ctx: RequestContext, **headers: Any) -> RequestContext:
    md = Metadata(request_id=ctx.metadata["request_id"], message_type=MessageType.RESPONSE)
    md.update(headers)
    ctx.response_metadata = md
    return ctx


def env(base_dir: str | Path = REPO, stats: Any = None) -> FilterEnv:
    services = {"stats": stats} if stats is not None else {}
    return FilterEnv(listener="in", protocol="tinyrpc", base_dir=str(base_dir), services=services)


def make_filter(module: str, **options: Any) -> WasmFilter:
    return WasmFilter({"module": module, **options}, env())


def wat_prelude(pages: int = 2, heap_start: int = 4096) -> str:
    """The smallest Proxy-Wasm module: ABI marker, memory, a bump allocator. Tests add functions to it."""
    return WAT_PRELUDE_TEMPLATE.replace("PAGES", str(pages)).replace("HEAP_START", str(heap_start))


WAT_PRELUDE_TEMPLATE = """
  (memory (export "memory") PAGES)
  (global $top (mut i32) (i32.const HEAP_START))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $top))
    (global.set $top (i32.add (global.get $top) (i32.and (i32.add (local.get $n) (i32.const 7)) (i32.const -8))))
    (local.get $p))
"""
WAT_PRELUDE = wat_prelude()



@pytest.fixture
def wat_module(tmp_path):
    """Factory: WAT text (imports and functions, wrapped in a module) -> path of the built .wasm."""
    counter = iter(range(1000))

    def build(body: str, prelude: bool = True, imports: str = "") -> str:
        text = f"(module {imports} {WAT_PRELUDE if prelude else ''} {body})"
        path = tmp_path / f"m{next(counter)}.wasm"
        path.write_bytes(wasmtime.wat2wasm(text))
        return str(path)

    return build
