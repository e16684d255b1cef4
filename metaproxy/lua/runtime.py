"""One sandboxed, bounded Lua state per script, entered by one greenlet at a time.

Why one greenlet at a time: lupa keeps the Lua call stack on the C stack of
whoever entered the runtime. If a Python callback yields (a log handler doing
cooperative I/O, a gevent.sleep) and another greenlet enters the same runtime,
the two interleave on one Lua state: measured, Lua 5.4 segfaults and LuaJIT
silently mixes requests. A runtime therefore has a gevent semaphore; it is
uncontended in practice (our callbacks do not block) and costs ~0.2 µs.
Because the holder is unique, the runtime's :class:`Binding` can point at "the
current request" without passing it through Lua.

Why one runtime per script: the memory limit and the step limit then belong to
one script, so a script that leaks or loops fails only its own requests, and a
runtime that is rebuilt after a memory error loses only that script's globals.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from gevent.lock import Semaphore

from metaproxy.lua.prelude import PRELUDE
from metaproxy.message import ErrorType, Metadata, Mutation

__all__ = ["ENGINES", "available_engines", "load_engine", "Binding", "ScriptRuntime", "ScriptError", "RunResult"]

log = logging.getLogger("metaproxy.lua")

#: lupa engines in order of preference: LuaJIT first, then the newest PUC Lua. Not LuaJIT 2.0
#: (on 64-bit it cannot take the custom allocator that enforces max_memory: it aborts the
#: process) and not Lua 5.1 (its load() cannot bind a chunk to the sandbox environment).
ENGINES = ("luajit21", "lua55", "lua54", "lua53", "lua52")

#: How often (in VM instructions) the count hook fires to charge the step budget.
HOOK_EVERY = 1000

_LOG_LEVELS = (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR)
_EMPTY_METADATA = Metadata()


def available_engines() -> list[str]:
    """The lupa engines importable here, best first."""
    found = []
    for name in ENGINES:
        try:
            importlib.import_module(f"lupa.{name}")
        except ImportError:
            continue
        found.append(name)
    return found


def load_engine(name: str = "auto") -> Any:
    """The lupa module for ``name`` (``auto``: LuaJIT 2.1 if present, else the newest Lua)."""
    if name == "auto":
        engines = available_engines()
        if not engines:
            raise ValueError("no lupa Lua engine is installed")
        name = engines[0]
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r} (one of: auto, {', '.join(ENGINES)})")
    try:
        return importlib.import_module(f"lupa.{name}")
    except ImportError:
        raise ValueError(f"engine {name!r} is not available (have: {', '.join(available_engines())})") from None


def _deny_attribute(obj: Any, name: Any, is_setting: bool) -> Any:
    """lupa attribute filter: no Python attribute is reachable from Lua, ever."""
    raise AttributeError("Python attributes are not accessible from Lua")


class ScriptError(Exception):
    """A script failed to compile or to run its top level."""


class RunResult:
    """Outcome codes of :meth:`ScriptRuntime.run` (mirrors the prelude's ``finish``)."""

    OK = 0
    REPLY = 1
    ERROR = 2
    MEMORY = 3


class Binding:
    """The Python half of the handle: what "the current request" is for one runtime.

    The prelude's handle closures call these bound methods; a script never sees
    them. ``md``/``mut`` are the request or the response side depending on the
    phase being run.
    """

    __slots__ = ("ctx", "md", "mut", "table_from")

    def __init__(self, table_from: Any) -> None:
        self.ctx: Any = None
        self.md: Metadata = _EMPTY_METADATA
        self.mut: Mutation = Mutation()
        self.table_from = table_from

    def md_get(self, key: str) -> str | None:
        return self.md.get_str(key)

    def md_set(self, key: str, value: str) -> None:
        self.md[key] = value

    def md_keys(self) -> Any:
        return self.table_from([k for k, v in self.md.items() if v is not None])

    def md_items(self) -> Any:
        return self.table_from(dict(self.md.str_items()))

    def mut_get(self, key: str) -> str | None:
        return self.mut.get(key)

    def mut_set(self, key: str, value: str) -> None:
        self.mut[key] = value

    def mut_remove(self, key: str) -> None:
        self.mut.pop(key, None)

    def route_name(self) -> str:
        ctx = self.ctx
        return ctx.route_name if ctx is not None else ""

    def cluster(self) -> str:
        ctx = self.ctx
        return (ctx.cluster_name or "") if ctx is not None else ""

    @staticmethod
    def log(script: str, level: int, message: str) -> None:
        log.log(_LOG_LEVELS[level], "%s: %s", script, message)


class ScriptRuntime:
    """A lupa runtime running one script (``name``) in its sandbox, with its bounds.

    ``compile`` installs a new version of the script only if it compiles and
    its top level runs; otherwise the previous version keeps running.
    ``run`` executes one callback for one request and returns
    ``(code, text, message, scratch)`` or ``None`` for the common "ok, no
    scratch table" case.
    """

    def __init__(self, engine: Any, name: str, step_limit: int, max_memory: int, config: Any = None) -> None:
        self.engine = engine
        self.name = name
        self.step_limit = step_limit
        self.max_memory = max_memory
        self.config = config
        self.source: str | None = None
        self.has_request = False
        self.has_response = False
        self.guard = Semaphore()
        self._rebuilding = False
        #: Set when a rebuilt state could not restart the script: its requests fail (closed, not open).
        self.broken: str | None = None
        self._new_state()

    # -- state ----------------------------------------------------------------
    def _new_state(self) -> None:
        lua = self.engine.LuaRuntime(
            register_eval=False,
            register_builtins=False,
            unpack_returned_tuples=True,
            attribute_filter=_deny_attribute,
            max_memory=self.max_memory,
        )
        binding = Binding(lua.table_from)
        py = lua.table_from({
            "md_get": binding.md_get, "md_set": binding.md_set, "md_keys": binding.md_keys,
            "md_items": binding.md_items, "mut_get": binding.mut_get, "mut_set": binding.mut_set,
            "mut_remove": binding.mut_remove, "route_name": binding.route_name, "cluster": binding.cluster,
            "log": binding.log,
        })
        kinds = lua.table_from({kind.value: True for kind in ErrorType})
        kinds_text = ", ".join(kind.value for kind in ErrorType)
        setup = lua.execute("return function(src, ...) return assert(load(src, '=metaproxy-host'))(...) end")
        host = setup(PRELUDE, py, kinds, kinds_text, self.step_limit, min(HOOK_EVERY, self.step_limit))
        # Nothing of lupa's Python bridge stays reachable by name, not even from the host's globals.
        lua.globals().python = None
        self.lua = lua
        self.binding = binding
        self._host_run = host.run
        self._host_compile = host.compile
        self._host_probe = host.probe
        self._host_reset = host.reset
        self._lua_config = self._to_lua(self.config)

    def _to_lua(self, value: Any) -> Any:
        if isinstance(value, (dict, list, tuple)):
            return self.lua.table_from(value, recursive=True)
        return value

    def rebuild(self) -> None:
        """A fresh state with the current script (after a memory error left the old one full)."""
        if self._rebuilding:
            return
        self._rebuilding = True
        try:
            self._new_state()
            if self.source is not None:
                try:
                    self._compile_locked(self.source)
                except ScriptError as exc:
                    log.error("%s: the script no longer starts in a fresh Lua state: %s", self.name, exc)
                    self.broken = f"{self.name}: does not start after a memory error: {exc}"
        finally:
            self._rebuilding = False

    # -- compile ------------------------------------------------------------------
    def compile(self, source: str) -> None:
        """Install ``source`` as the script; raise ScriptError and keep the old one if it fails."""
        with self.guard:
            self._compile_locked(source)

    def _compile_locked(self, source: str) -> None:
        try:
            result = self._host_compile(source, self.name, self._lua_config)
        except Exception as exc:  # memory errors outside pcall, undecodable messages
            self._reset()
            self._after_memory_error()
            raise ScriptError(f"{self.name}: {exc}") from None
        if not isinstance(result, tuple) or result[0] is None:
            reason = result[1] if isinstance(result, tuple) else "no result"
            self._after_memory_error()
            raise ScriptError(str(reason))
        self.has_request, self.has_response = bool(result[0]), bool(result[1])
        self.source = source
        self.broken = None

    # -- run ------------------------------------------------------------------------
    def run(self, phase: int, ctx: Any, md: Metadata, mut: Mutation, scratch: Any) -> Any:
        """Run the request (phase 1) or response (phase 2) callback for ``ctx``."""
        binding = self.binding
        if self.broken is not None:
            return (RunResult.ERROR, self.broken, None, None)
        with self.guard:
            binding.ctx = ctx
            binding.md = md
            binding.mut = mut
            try:
                result = self._host_run(phase, scratch)
            except Exception as exc:
                # A hook firing in the few host instructions after the script returned,
                # a memory error outside the script's pcall, a message that is not UTF-8.
                result = (RunResult.ERROR, f"{self.name}: {type(exc).__name__}: {exc}", None, None)
                self._reset()
                self._after_memory_error()
            finally:
                binding.ctx = None
                binding.md = _EMPTY_METADATA
            if result is not None and result[0] == RunResult.MEMORY:
                self._after_memory_error()
        return result

    def _reset(self) -> None:
        try:
            self._host_reset()
        except Exception:  # a state too full even for this: the memory handling rebuilds it
            pass

    def _after_memory_error(self) -> None:
        """Free what a failed script left; rebuild the state if it is still mostly full."""
        try:
            self.lua.gccollect()
            if self.lua.get_memory_used() > self.max_memory // 2:
                log.warning("%s: Lua state still holds %d bytes after a memory error; rebuilding it",
                            self.name, self.lua.get_memory_used())
                self.rebuild()
        except Exception as exc:  # pragma: no cover - a state too broken to collect
            log.warning("%s: rebuilding the Lua state after %s", self.name, exc)
            self.rebuild()

    def probe(self, source: str) -> Any:
        """Run ``source`` in a fresh sandbox environment and return its value (for tests and tools)."""
        with self.guard:
            return self._host_probe(source)

    def memory_used(self) -> int:
        return int(self.lua.get_memory_used() or 0)
