"""The host side of Proxy-Wasm: what each imported function does, against metaproxy's data.

One :class:`AbiHost` serves one VM instance. Its methods carry the names of the
imports they implement (``proxy_get_header_map_value``...; WASI ones are
``wasi_<name>``) and take the raw integers of the call; vm.py binds them to
the module's imports and falls back to :func:`unimplemented` for the rest.

The header maps are metaproxy's Metadata and Mutation:

* request headers  = ``ctx.metadata`` read as strings, with ``ctx.mutation`` applied;
* response headers = ``ctx.response_metadata`` with ``ctx.response_mutation`` applied;
* writes (add/replace/set pairs) go to the Mutation, so the codec writes them on the
  wire, and later reads in any filter see them. ``remove`` drops a key a filter
  added; a key decoded from the message stays (the Mutation cannot delete).

Host functions never block and never log directly: a guest call runs to the
end without a gevent switch (another greenlet must not enter the same
instance), and log lines are kept in :attr:`AbiHost.logs` until the call returns.
"""

from __future__ import annotations

import logging
import os
import struct
import time
from collections.abc import Callable
from typing import Any

from metaproxy.chain import RequestContext
from metaproxy.message import ErrorType, Metadata, Mutation, ProxyError, as_str
from metaproxy.wasm import abi, properties
from metaproxy.wasm.metrics import MetricRegistry
from metaproxy.wasm.native import GuestExit, GuestFunction, GuestMemory
from metaproxy.wasm.shim import (
    CACHE_KEY_MAX,
    CACHE_KEYS_MAX,
    CACHE_TABLES,
    CACHE_VALUES_END,
    CACHE_VALUES_START,
    STAGE_MAX,
    STAGE_START,
    STAGED,
    TEXT_START,
    ShimBuffer,
)

_PY_LEVEL_TO_ABI = ((logging.DEBUG, abi.LOG_DEBUG), (logging.INFO, abi.LOG_INFO),
                    (logging.WARNING, abi.LOG_WARN), (logging.ERROR, abi.LOG_ERROR))
_ABI_TO_PY_LEVEL = {abi.LOG_TRACE: logging.DEBUG, abi.LOG_DEBUG: logging.DEBUG, abi.LOG_INFO: logging.INFO,
                    abi.LOG_WARN: logging.WARNING, abi.LOG_ERROR: logging.ERROR, abi.LOG_CRITICAL: logging.CRITICAL}
_U32_MAX = 0xFFFFFFFF
_U32 = struct.Struct("<I")
#: Mutation.__setitem__ only coerces key and value to str; the host's keys and values are str already, so
#: the dict's own store writes the same entry without two Python calls on every header write (~0.4 µs).
#: tests/wasm/test_fastpath.py checks that both writes stay identical.
_store = dict.__setitem__
#: ABI codes the hottest host functions use, as plain globals (one lookup instead of two).
_OK, _NOT_FOUND = abi.OK, abi.NOT_FOUND
_REQUEST_MAP, _RESPONSE_MAP = abi.MAP_REQUEST_HEADERS, abi.MAP_RESPONSE_HEADERS
_CACHE_VALUES_MAX = CACHE_VALUES_END - CACHE_VALUES_START


def error_kind_for(status: int, grpc_status: int) -> ErrorType:
    """The ErrorType a local response means: by HTTP status, else by gRPC status."""
    by_http = {401: ErrorType.PERMISSION_DENIED, 403: ErrorType.PERMISSION_DENIED, 404: ErrorType.ROUTE_NOT_FOUND,
               408: ErrorType.TIMEOUT, 429: ErrorType.OVER_LIMIT, 502: ErrorType.BAD_RESPONSE,
               503: ErrorType.NO_HEALTHY_UPSTREAM, 504: ErrorType.TIMEOUT}
    kind = by_http.get(status)
    if kind is not None:
        return kind
    by_grpc = {4: ErrorType.TIMEOUT, 5: ErrorType.ROUTE_NOT_FOUND, 7: ErrorType.PERMISSION_DENIED,
               8: ErrorType.OVER_LIMIT, 14: ErrorType.NO_HEALTHY_UPSTREAM, 16: ErrorType.PERMISSION_DENIED}
    return by_grpc.get(grpc_status, ErrorType.UNSPECIFIED)



def _view_value(metadata: Metadata | None, mutation: Mutation, key: str) -> str | None:
    """``key``'s value in a header map as a module sees it: the mutation's, else the metadata's as text.

    ``in`` then ``[]``, not ``.get``: compiled (mypyc), a method call on a dict subclass goes through a
    method lookup, the ``in`` and ``[]`` operators through the dict's own C slots.
    """
    if key in mutation:
        return mutation[key]
    if metadata is None or key not in metadata:
        return None
    value = metadata[key]
    if value is None or type(value) is str:
        return value
    return as_str(value)


def _cached_values(keys: list[str], mutation: Mutation, metadata: Metadata | None, values: list[str],
                   missing: int) -> int:
    """Append each key's value as a module sees it (:func:`_view_value`; "" if none) to ``values``; return
    ``missing`` with bit i set for each value i that has none."""
    for key in keys:
        value = _view_value(metadata, mutation, key)
        if value is None:
            missing |= 1 << len(values)
            value = ""
        values.append(value)
    return missing


class Stream:
    """One request as the module sees it: a Proxy-Wasm stream context.

    ``ctx`` (the RequestContext) is set only while a callback for this stream
    runs: the request's ``ctx.scratch`` holds the stream's sentinel, and a
    reference back would keep both alive after the request is gone.
    Every field is assigned in ``__init__`` (compiled with mypyc, a native class has
    exactly the attributes its ``__init__`` sets, and the call is a C call).
    """

    def __init__(self, context_id: int, ctx: RequestContext | None, generation: int) -> None:
        self.context_id = context_id
        self.ctx = ctx
        self.generation = generation
        self.local_reply: ProxyError | None = None
        self.continued = False
        self.finished = False


class Identity:
    """Who the plugin is: answers ``plugin_*`` properties and names it in logs and stats."""

    __slots__ = ("plugin_name", "root_id", "vm_id", "module_name")

    def __init__(self, plugin_name: str, root_id: str, vm_id: str, module_name: str) -> None:
        self.plugin_name = plugin_name
        self.root_id = root_id
        self.vm_id = vm_id
        self.module_name = module_name


def unimplemented(*_args: int) -> int:
    """Any Proxy-Wasm function metaproxy does not offer (HTTP/gRPC calls, shared data, queues...)."""
    return abi.UNIMPLEMENTED


def wasi_unsupported(*_args: int) -> int:
    """Filesystem, sockets and the like: not in the sandbox."""
    return abi.WASI_NOTSUP


def wasi_bad_fd(*_args: int) -> int:
    """fd_* and path_* calls: there are no open files nor directories (this ends wasi-libc's preopen scan)."""
    return abi.WASI_BADF


class AbiHost:
    """State and host functions of one instance: memory, contexts, configuration, logs."""

    def __init__(self, identity: Identity, plugin_config: bytes, vm_config: bytes, metrics: MetricRegistry,
                 logger: logging.Logger) -> None:
        self.identity = identity
        self.plugin_config = plugin_config
        self.vm_config = vm_config
        self.metrics = metrics
        self.logger = logger
        self.memory: GuestMemory | None = None
        #: The guest's allocator (proxy_on_memory_allocate or malloc): size -> pointer.
        self.allocate: Callable[[int], int | None] | None = None
        self.root_context_id = 1
        #: Stream of the effective context; None while the root context is active.
        self.current: Stream | None = None
        self.streams: dict[int, Stream] = {}
        self.tick_period_ms = 0
        #: Contexts whose proxy_on_done said "not yet" and that then called proxy_done.
        self.done_requested: list[int] = []
        self.awaiting_done: set[int] = set()
        self.logs: list[tuple[int, str]] = []
        self._threshold = abi.LOG_INFO
        self._threshold_until = 0.0
        self._stdio = {1: b"", 2: b""}
        #: The fast shim's words (shim.py): [0] bytes of recorded header writes not applied yet, [1] whether
        #: header writes may be recorded (a request with its maps is current), [2] staged size, [3] how many
        #: writes are recorded. A plain
        #: list while no shim is installed, so the checks below cost the same either way.
        self.words: Any = [0] * 4
        self.shim: ShimBuffer | None = None
        #: Request phase (0) or response phase (1) of the entry under way (which read cache a read teaches).
        self.phase = 0
        self._forget_cache()

    def _forget_cache(self) -> None:
        #: Per phase, the (map type, key) pairs the module read in that phase: the read cache's keys, in the
        #: order of the shim's table; their raw key bytes (a set, to learn each once); where the table ends.
        self.cache_keys: tuple[list[tuple[int, str]], list[tuple[int, str]]] = ([], [])
        self._cache_known: tuple[dict[tuple[int, bytes], str], dict[tuple[int, bytes], str]] = ({}, {})
        #: Per phase, (request map keys, response map keys): the order of the table and of the values.
        self._cache_split: list[tuple[list[str], list[str]]] = [([], []), ([], [])]

    def attach_shim(self, shim: ShimBuffer | None) -> None:
        """Use ``shim`` (installed after the module started) for recorded writes and staged answers."""
        self.shim = shim
        self.words = shim.words if shim is not None else [0] * 4
        self._forget_cache()

    def set_current(self, stream: Stream | None) -> None:
        """Make ``stream`` the effective context (None: the root), telling the shim whether writes may be recorded."""
        if self.words[0]:
            self.apply_writes()
        self.current = stream
        words = self.words
        words[1] = 1 if stream is not None and stream.ctx is not None else 0  # (and no read cache: another context)

    def enter_phase(self, stream: Stream, rctx: RequestContext, phase: int) -> None:
        """:meth:`set_current` for a header phase (0 request, 1 response), then that phase's read cache.

        The module's header writes may be recorded by the shim from here on.
        """
        words = self.words
        if words[0]:
            self.apply_writes()
        self.current = stream
        words[1] = 1
        self.phase = phase
        if self.cache_keys[phase]:
            self.fill_cache(rctx, phase)  # reads of keys read before are answered in WebAssembly

    def leave_phase(self, stream: Stream) -> None:
        """After a header phase: apply the writes the shim recorded, back to the root context, flush logs."""
        words = self.words
        if words[0]:
            self.apply_writes()
        self.current = None
        words[1] = 0
        stream.ctx = None  # no cycle ctx -> scratch -> sentinel -> stream -> ctx: the sentinel must die
        if self.logs:
            self.flush_logs()

    def _drop_cache(self) -> None:
        """The maps (or the cache's keys) changed: reads go to Python until the next entry fills the cache."""
        words = self.words
        if words[1] > 1:
            words[1] = 1

    def fill_cache(self, ctx: RequestContext, phase: int) -> None:
        """Write the values of the keys the module read in this phase before, for the shim to answer reads.

        Why: a ``proxy_get_header_map_value`` answered by Python costs a crossing
        out of WebAssembly and back (~1.5 µs); filters read the same few keys on every
        request. The shim answers a read of a cached key by itself unless a write of
        that key is still in its log; Python drops the cache whenever it changes a map
        (:meth:`apply_writes`, the write functions) or the current context changes.
        """
        request_keys, response_keys = self._cache_split[phase]
        values: list[str] = []
        missing = 0  # bit i: key i has no value
        if request_keys:
            missing = _cached_values(request_keys, ctx.mutation, ctx.metadata, values, missing)
        if response_keys:
            missing = _cached_values(response_keys, ctx.response_mutation, ctx.response_metadata, values, missing)
        append = values.append
        count = len(values)
        append("")  # every value is followed by a NUL
        try:
            blob = "\0".join(values).encode("utf-8")
        except UnicodeEncodeError:
            return  # text UTF-8 cannot carry: reads go to Python (which fails them as before)
        size = len(blob)
        if size > _CACHE_VALUES_MAX or blob.count(b"\0") != count:
            return  # a value holding a NUL, or too much
        self.shim.view[CACHE_VALUES_START:CACHE_VALUES_START + size] = blob  # type: ignore[union-attr]
        words = self.words
        words[3] = missing
        words[1] = 1 | (phase + 1) << 1 | count << 8

    def _learn(self, map_type: int, raw: bytes, key: str) -> None:
        """Add a key the module read to this phase's read cache (once; up to CACHE_KEYS_MAX keys).

        The shim's table lists the request map's keys, then the response map's, as
        :meth:`fill_cache` writes their values: it is rewritten whole (a key is learned once).
        """
        phase = self.phase
        known = self._cache_known[phase]
        if (map_type, raw) in known or len(known) >= CACHE_KEYS_MAX or len(raw) > CACHE_KEY_MAX:
            return
        known[(map_type, raw)] = key
        view = self.shim.view  # type: ignore[union-attr]
        at = CACHE_TABLES[phase]
        ordered = [(m, r, k) for (m, r), k in known.items() if m == _REQUEST_MAP]
        ordered += [(m, r, k) for (m, r), k in known.items() if m != _REQUEST_MAP]
        for entry_map, entry_raw, _ in ordered:
            _U32.pack_into(view, at, entry_map)
            _U32.pack_into(view, at + 4, len(entry_raw))
            view[at + 8:at + 8 + len(entry_raw)] = entry_raw
            at += 8 + ((len(entry_raw) + 3) & -4)
        self.cache_keys[phase][:] = [(m, k) for m, _, k in ordered]
        self._cache_split[phase] = ([k for m, _, k in ordered if m == _REQUEST_MAP],
                                    [k for m, _, k in ordered if m != _REQUEST_MAP])
        self._drop_cache()  # the table changed under the values of this entry

    def apply_writes(self) -> None:
        """Apply, in order, the header writes the shim recorded, to the current request (then forget them).

        The shim records only while a request with its maps is current, and every
        change of the current context applies the log first, so the writes land
        where the Python host functions would have put them. Written for speed (it
        runs once or twice per request phase): the texts of all writes are decoded
        with one ``decode`` and one ``split`` (UTF-8 decoding stops at a NUL
        whatever came before it, so each text decodes as it would alone), and a
        replace on the request map, the common write, is one dict store.
        """
        words = self.words
        used = words[0]
        words[0] = 0
        if words[1] > 1:
            words[1] = 1  # the maps change: the read cache is stale
        stream = self.current
        if stream is None:
            return  # the request is gone (a trap ended the call): nothing to write to
        ctx = stream.ctx
        if ctx is None:
            return
        view = self.shim.view  # type: ignore[union-attr]  # words[0] is non-zero only with a shim
        texts: list[str] = view[TEXT_START:TEXT_START + used].tobytes().decode("utf-8", "replace").split("\0")
        # Replaces are gathered in plain dicts and stored with one ``update`` per map: dict.update on the
        # Mutation (a dict subclass) inserts without its __setitem__ (which only coerces to str, and these are
        # str), as ``_store`` did for one key, at one call for all. A later write of a key wins, and new keys
        # keep the order of their first write, as storing one by one did.
        request: dict[str, str] = {}
        response: dict[str, str] = {}
        end = len(texts) - 2  # the log ends with a NUL: the split's last item is ""
        at = 0
        while at < end:
            letter, key, value = texts[at], texts[at + 1], texts[at + 2]
            at += 3
            if letter == "a":  # a replace on the request map: the common write
                request[key] = value
            elif letter == "c":  # a replace on the response map
                response[key] = value
            else:  # an add ("b" request map, "d" response map): folds into the value the module sees
                pending = request if letter == "b" else response
                old: str | None = pending.get(key)
                if old is None:
                    old = _view_value(ctx.metadata if letter == "b" else ctx.response_metadata,
                                      ctx.mutation if letter == "b" else ctx.response_mutation, key)
                pending[key] = f"{old},{value}" if old is not None else value  # one value per key: fold like
                #                                                                 repeated HTTP headers
        if request:
            ctx.mutation.update(request)
        if response:
            ctx.response_mutation.update(response)

    def _give(self, data: bytes, ptr_ptr: int, size_ptr: int) -> int:
        """Return ``data`` to the module: through the shim's staging area when it is installed, else as before."""
        shim = self.shim
        size = len(data)
        if shim is None or not size or size > STAGE_MAX:
            return self._return_bytes(data, ptr_ptr, size_ptr)
        shim.view[STAGE_START:STAGE_START + size] = data
        self.words[2] = size
        return STAGED

    def attach(self, memory: GuestMemory, allocate: GuestFunction | None) -> None:
        self.memory = memory
        self.allocate = allocate.call if allocate is not None else None

    def sync_memory(self) -> None:
        """Re-read the size of guest memory now (accesses also do it themselves when a pointer seems past it)."""
        memory = self.memory
        if memory is not None:
            memory.sync()

    # -- helpers ---------------------------------------------------------------------------------
    def _read(self, ptr: int, size: int) -> bytes | None:
        return self.memory.read(ptr, size)  # type: ignore[union-attr]

    def _read_str(self, ptr: int, size: int) -> str | None:
        return self.memory.read_str(ptr, size)  # type: ignore[union-attr]

    def _return_bytes(self, data: bytes, ptr_ptr: int, size_ptr: int) -> int:
        """Copy ``data`` into guest memory the guest allocated, and tell it where (pointer, size)."""
        memory = self.memory
        size = len(data)
        if not size:
            ok = memory.write_u32_pair(ptr_ptr, 0, size_ptr, 0)  # type: ignore[union-attr]
            return abi.OK if ok else abi.INVALID_MEMORY_ACCESS
        allocate = self.allocate
        if allocate is None:
            return abi.INTERNAL_FAILURE
        ptr = allocate(size) or 0  # may grow the memory: the bounds checks below re-read its size if needed
        end = ptr + size
        if not ptr or (end > memory.limit and not memory.reaches(end)):  # type: ignore[union-attr]
            return abi.INVALID_MEMORY_ACCESS
        out_end = (ptr_ptr if ptr_ptr > size_ptr else size_ptr) + 4
        if out_end > memory.limit and not memory.reaches(out_end):  # type: ignore[union-attr]
            return abi.INVALID_MEMORY_ACCESS
        view = memory.view  # type: ignore[union-attr]  # read after the checks: they may have renewed it
        view[ptr:end] = data
        _U32.pack_into(view, ptr_ptr, ptr)
        _U32.pack_into(view, size_ptr, size)
        return abi.OK

    def _maps(self, map_type: int) -> tuple[Metadata | None, Mutation] | None:
        """(metadata, mutation) behind a header map, or None when that map is not available now."""
        if self.words[0]:
            self.apply_writes()
        stream = self.current
        if stream is None or stream.ctx is None:
            return None
        ctx = stream.ctx
        if map_type == abi.MAP_REQUEST_HEADERS:
            return ctx.metadata, ctx.mutation
        if map_type == abi.MAP_RESPONSE_HEADERS:
            return ctx.response_metadata, ctx.response_mutation
        return None

    @staticmethod
    def view_pairs(metadata: Metadata | None, mutation: Mutation) -> list[tuple[str, str]]:
        """The map as the module sees it: Metadata strings with the Mutation applied, in order."""
        if metadata is None:
            return list(mutation.items())
        if not mutation:
            return list(metadata.str_items())
        pairs = [(key, mutation.get(key, value)) for key, value in metadata.str_items()]
        pairs.extend((key, value) for key, value in mutation.items() if metadata.get(key) is None)
        return pairs

    @staticmethod
    def view_value(metadata: Metadata | None, mutation: Mutation, key: str) -> str | None:
        value = mutation.get(key)
        if value is None and metadata is not None:
            value = metadata.get_str(key)
        return value

    def header_value(self, key: str) -> str | None:
        """The current request's header-map value of ``key`` (for ``metaprotocol.*`` properties)."""
        if self.words[0]:
            self.apply_writes()
        stream = self.current
        if stream is None or stream.ctx is None:
            return None
        return self.view_value(stream.ctx.metadata, stream.ctx.mutation, key)

    def log_threshold(self) -> int:
        """The ABI log level below which proxy_log drops messages (the logger's level, re-read every second)."""
        now = time.monotonic()
        if now < self._threshold_until:
            return self._threshold
        level = self.logger.getEffectiveLevel()
        threshold = abi.LOG_CRITICAL
        for py_level, abi_level in _PY_LEVEL_TO_ABI:
            if level <= py_level:
                threshold = abi_level
                break
        self._threshold, self._threshold_until = threshold, now + 1.0
        return threshold

    def flush_logs(self) -> None:
        """Emit what the module logged during the call that just returned (outside the guest)."""
        logs, self.logs = self.logs, []
        prefix = f"wasm[{self.identity.plugin_name}]"
        for level, message in logs:
            self.logger.log(_ABI_TO_PY_LEVEL.get(level, logging.INFO), "%s %s", prefix, message)

    # -- logging and clocks ------------------------------------------------------------------------
    def proxy_log(self, level: int, ptr: int, size: int) -> int:
        if level > abi.LOG_CRITICAL:
            return abi.BAD_ARGUMENT
        if level < self.log_threshold():
            return abi.OK  # SDKs log a lot at debug level: dropping it must cost next to nothing
        message = self._read_str(ptr, size)
        if message is None:
            return abi.INVALID_MEMORY_ACCESS
        self.logs.append((level, message))
        return abi.OK

    def proxy_get_log_level(self, ret_ptr: int) -> int:
        return abi.OK if self.memory.write_u32(ret_ptr, self.log_threshold()) else abi.INVALID_MEMORY_ACCESS  # type: ignore[union-attr]

    def proxy_get_current_time_nanoseconds(self, ret_ptr: int) -> int:
        return abi.OK if self.memory.write_u64(ret_ptr, time.time_ns()) else abi.INVALID_MEMORY_ACCESS  # type: ignore[union-attr]

    def proxy_set_tick_period_milliseconds(self, period: int) -> int:
        self.tick_period_ms = period
        return abi.OK

    # -- contexts ----------------------------------------------------------------------------------
    def proxy_set_effective_context(self, context_id: int) -> int:
        if context_id == self.root_context_id:
            self.set_current(None)
            return abi.OK
        stream = self.streams.get(context_id)
        if stream is None:
            return abi.BAD_ARGUMENT
        self.set_current(stream)
        return abi.OK

    def proxy_done(self) -> int:
        context_id = self.current.context_id if self.current is not None else self.root_context_id
        if context_id not in self.awaiting_done:
            return abi.NOT_FOUND
        self.awaiting_done.discard(context_id)
        self.done_requested.append(context_id)
        return abi.OK

    # -- configuration buffers -----------------------------------------------------------------------
    def _buffer(self, buffer_type: int) -> bytes | int:
        if buffer_type == abi.BUFFER_PLUGIN_CONFIGURATION:
            return self.plugin_config
        if buffer_type == abi.BUFFER_VM_CONFIGURATION:
            return self.vm_config
        return abi.BAD_ARGUMENT if buffer_type > abi.BUFFER_MAX else abi.NOT_FOUND

    def proxy_get_buffer_bytes(self, buffer_type: int, start: int, max_size: int, ptr_ptr: int,
                               size_ptr: int) -> int:
        data = self._buffer(buffer_type)
        if isinstance(data, int):
            return data
        if start > len(data):
            return abi.BAD_ARGUMENT
        chunk = data[start:start + max_size]
        if not chunk:
            return abi.OK  # as Envoy does: nothing to copy, nothing written (an SDK may rely on it)
        return self._return_bytes(chunk, ptr_ptr, size_ptr)

    def proxy_get_buffer_status(self, buffer_type: int, size_ptr: int, flags_ptr: int) -> int:
        data = self._buffer(buffer_type)
        if isinstance(data, int):
            return data
        ok = self.memory.write_u32_pair(size_ptr, len(data), flags_ptr, 0)  # type: ignore[union-attr]
        return abi.OK if ok else abi.INVALID_MEMORY_ACCESS

    def proxy_set_buffer_bytes(self, buffer_type: int, *_rest: int) -> int:
        data = self._buffer(buffer_type)
        return data if isinstance(data, int) else abi.BAD_ARGUMENT  # configuration is read-only

    def proxy_get_configuration(self, ptr_ptr: int, size_ptr: int) -> int:
        """ABI 0.1.0's way to read the plugin configuration."""
        return self._return_bytes(self.plugin_config, ptr_ptr, size_ptr)

    # -- header maps ---------------------------------------------------------------------------------
    def proxy_get_header_map_size(self, map_type: int, size_ptr: int) -> int:
        maps = self._maps(map_type)
        if maps is None:
            return abi.BAD_ARGUMENT if map_type > abi.MAP_MAX else abi.NOT_FOUND
        size = len(abi.serialize_pairs(self.view_pairs(*maps)))
        return abi.OK if self.memory.write_u32(size_ptr, size) else abi.INVALID_MEMORY_ACCESS  # type: ignore[union-attr]

    def proxy_get_header_map_pairs(self, map_type: int, ptr_ptr: int, size_ptr: int) -> int:
        maps = self._maps(map_type)
        if maps is None:
            return abi.BAD_ARGUMENT if map_type > abi.MAP_MAX else abi.NOT_FOUND
        return self._give(abi.serialize_pairs(self.view_pairs(*maps)), ptr_ptr, size_ptr)

    def proxy_set_header_map_pairs(self, map_type: int, ptr: int, size: int) -> int:
        maps = self._maps(map_type)
        if maps is None:
            return abi.BAD_ARGUMENT if map_type > abi.MAP_MAX else abi.NOT_FOUND
        blob = self._read(ptr, size)
        if blob is None:
            return abi.INVALID_MEMORY_ACCESS
        try:
            wanted = dict(abi.deserialize_pairs(blob))
        except ValueError:
            return abi.BAD_ARGUMENT
        metadata, mutation = maps
        self._drop_cache()
        for key in [k for k in mutation if k not in wanted]:
            del mutation[key]
        for key, value in wanted.items():
            if self.view_value(metadata, mutation, key) != value:
                mutation[key] = value
        return abi.OK

    def proxy_get_header_map_value(self, map_type: int, key_ptr: int, key_size: int, ptr_ptr: int,
                                   size_ptr: int) -> int:
        # The hottest host function: _maps, view_value and the memory reads are written out inline.
        if self.words[0]:
            self.apply_writes()
        stream = self.current
        ctx = stream.ctx if stream is not None else None
        if ctx is None or (map_type != _REQUEST_MAP and map_type != _RESPONSE_MAP):
            return self._no_map(map_type)
        memory = self.memory
        end = key_ptr + key_size
        if end > memory.limit and not memory.reaches(end):  # type: ignore[union-attr]
            return abi.INVALID_MEMORY_ACCESS
        raw = memory.view[key_ptr:end].tobytes()  # type: ignore[union-attr]
        key = raw.decode("utf-8", "replace")
        if self.shim is not None:
            self._learn(map_type, raw, key)  # the next entries of this phase answer it in WebAssembly
        if map_type == _REQUEST_MAP:
            value = _view_value(ctx.metadata, ctx.mutation, key)
        else:
            value = _view_value(ctx.response_metadata, ctx.response_mutation, key)
        if value is None:
            return _NOT_FOUND
        return self._give(value.encode("utf-8"), ptr_ptr, size_ptr)

    def _no_map(self, map_type: int) -> int:
        """The status for a header map that is not available now (or does not exist)."""
        return abi.BAD_ARGUMENT if map_type > abi.MAP_MAX else abi.NOT_FOUND

    def _write_value(self, append: bool, map_type: int, key_ptr: int, key_size: int, value_ptr: int,
                     value_size: int) -> int:
        """proxy_add_header_map_value (``append``) and proxy_replace_header_map_value: write to the Mutation."""
        if self.words[0]:
            self.apply_writes()  # writes the shim recorded come first
        stream = self.current
        ctx = stream.ctx if stream is not None else None
        if ctx is None or (map_type != _REQUEST_MAP and map_type != _RESPONSE_MAP):
            return self._no_map(map_type)
        memory = self.memory
        key_end, value_end = key_ptr + key_size, value_ptr + value_size
        end = key_end if key_end > value_end else value_end
        if end > memory.limit and not memory.reaches(end):  # type: ignore[union-attr]
            return abi.INVALID_MEMORY_ACCESS
        view = memory.view  # type: ignore[union-attr]
        key = view[key_ptr:key_end].tobytes().decode("utf-8", "replace")
        value = view[value_ptr:value_end].tobytes().decode("utf-8", "replace")
        self._drop_cache()
        if map_type == _REQUEST_MAP:
            mutation = ctx.mutation
            if append:
                old = self.view_value(ctx.metadata, mutation, key)
                if old is not None:
                    value = f"{old},{value}"  # one value per key: fold like repeated HTTP headers
        else:
            mutation = ctx.response_mutation
            if append:
                old = self.view_value(ctx.response_metadata, mutation, key)
                if old is not None:
                    value = f"{old},{value}"
        _store(mutation, key, value)
        return _OK

    # Methods, not functools.partialmethod: a compiled (mypyc) class has no descriptors of that kind. With the
    # host shim most writes never get here (they are recorded in WebAssembly).
    def proxy_add_header_map_value(self, map_type: int, key_ptr: int, key_size: int, value_ptr: int,
                                   value_size: int) -> int:
        return self._write_value(True, map_type, key_ptr, key_size, value_ptr, value_size)

    def proxy_replace_header_map_value(self, map_type: int, key_ptr: int, key_size: int, value_ptr: int,
                                       value_size: int) -> int:
        return self._write_value(False, map_type, key_ptr, key_size, value_ptr, value_size)

    def proxy_remove_header_map_value(self, map_type: int, key_ptr: int, key_size: int) -> int:
        maps = self._maps(map_type)
        if maps is None:
            return abi.BAD_ARGUMENT if map_type > abi.MAP_MAX else abi.NOT_FOUND
        key = self._read_str(key_ptr, key_size)
        if key is None:
            return abi.INVALID_MEMORY_ACCESS
        self._drop_cache()
        maps[1].pop(key, None)
        return abi.OK

    # -- stream control --------------------------------------------------------------------------------
    def proxy_send_local_response(self, status: int, details_ptr: int, details_size: int, body_ptr: int,
                                  body_size: int, _headers_ptr: int, _headers_size: int, grpc_status: int) -> int:
        details = self._read_str(details_ptr, details_size)
        body = self._read_str(body_ptr, body_size)
        if details is None or body is None:
            return abi.INVALID_MEMORY_ACCESS
        if self.current is None:
            return abi.NOT_FOUND
        grpc = -1 if grpc_status == _U32_MAX else grpc_status
        message = details or body or f"local response {status} from wasm filter {self.identity.plugin_name}"
        self.current.local_reply = ProxyError(error_kind_for(status, grpc), message)
        return abi.OK

    def proxy_continue_stream(self, stream_type: int) -> int:
        if stream_type > abi.STREAM_UPSTREAM:
            return abi.BAD_ARGUMENT
        if stream_type > abi.STREAM_RESPONSE:
            return abi.UNIMPLEMENTED
        if self.current is not None:
            self.current.continued = True
        return abi.OK

    def proxy_close_stream(self, stream_type: int) -> int:
        if stream_type > abi.STREAM_UPSTREAM:
            return abi.BAD_ARGUMENT
        if self.current is not None and self.current.local_reply is None:
            self.current.local_reply = ProxyError(
                ErrorType.UNSPECIFIED, f"request reset by wasm filter {self.identity.plugin_name}")
        return abi.OK

    def proxy_continue_request(self) -> int:
        return self.proxy_continue_stream(abi.STREAM_REQUEST)

    def proxy_continue_response(self) -> int:
        return self.proxy_continue_stream(abi.STREAM_RESPONSE)

    def proxy_clear_route_cache(self) -> int:
        return abi.OK  # routes are chosen after the filters run: nothing is cached yet

    # -- properties --------------------------------------------------------------------------------------
    def proxy_get_property(self, path_ptr: int, path_size: int, ptr_ptr: int, size_ptr: int) -> int:
        if self.words[0]:
            self.apply_writes()  # a property may read the request
        raw = self._read(path_ptr, path_size)
        if raw is None:
            return abi.INVALID_MEMORY_ACCESS
        ctx = self.current.ctx if self.current is not None else None  # None: root context, or request gone
        value = properties.resolve(properties.normalize(raw), self.identity, ctx, self.header_value)
        if value is None:
            return abi.NOT_FOUND
        return self._give(value, ptr_ptr, size_ptr)

    # -- metrics -------------------------------------------------------------------------------------------
    def proxy_define_metric(self, metric_type: int, name_ptr: int, name_size: int, id_ptr: int) -> int:
        if metric_type > abi.METRIC_HISTOGRAM:
            return abi.BAD_ARGUMENT
        name = self._read_str(name_ptr, name_size)
        if name is None:
            return abi.INVALID_MEMORY_ACCESS
        metric_id = self.metrics.define(metric_type, name)
        return abi.OK if self.memory.write_u32(id_ptr, metric_id) else abi.INVALID_MEMORY_ACCESS  # type: ignore[union-attr]

    def proxy_increment_metric(self, metric_id: int, delta: int) -> int:
        return self.metrics.increment(metric_id, delta)

    def proxy_record_metric(self, metric_id: int, value: int) -> int:
        return self.metrics.record(metric_id, value & 0xFFFFFFFFFFFFFFFF)

    def proxy_get_metric(self, metric_id: int, ret_ptr: int) -> int:
        value = self.metrics.get(metric_id)
        if value is None:
            return abi.NOT_FOUND
        return abi.OK if self.memory.write_u64(ret_ptr, value) else abi.INVALID_MEMORY_ACCESS  # type: ignore[union-attr]

    # -- WASI preview1 ---------------------------------------------------------------------------------------
    def wasi_fd_write(self, fd: int, iovs: int, iovs_len: int, written_ptr: int) -> int:
        if fd not in self._stdio:
            return abi.WASI_BADF
        vec = self._read(iovs, 8 * iovs_len)
        if vec is None:
            return abi.WASI_FAULT
        chunks = []
        for index in range(iovs_len):
            ptr = int.from_bytes(vec[8 * index:8 * index + 4], "little")
            size = int.from_bytes(vec[8 * index + 4:8 * index + 8], "little")
            data = self._read(ptr, size)
            if data is None:
                return abi.WASI_FAULT
            chunks.append(data)
        data = self._stdio[fd] + b"".join(chunks)
        *lines, rest = data.split(b"\n")
        level = abi.LOG_INFO if fd == 1 else abi.LOG_ERROR
        self.logs.extend((level, line.decode("utf-8", "replace")) for line in lines)
        self._stdio[fd] = rest[-4096:]
        if not self.memory.write_u32(written_ptr, sum(len(c) for c in chunks)):  # type: ignore[union-attr]
            return abi.WASI_FAULT
        return abi.WASI_SUCCESS

    def wasi_clock_time_get(self, clock_id: int, _precision: int, ret_ptr: int) -> int:
        if clock_id == 0:
            now = time.time_ns()
        elif clock_id == 1:
            now = time.monotonic_ns()
        else:
            return abi.WASI_NOTSUP
        return abi.WASI_SUCCESS if self.memory.write_u64(ret_ptr, now) else abi.WASI_FAULT  # type: ignore[union-attr]

    def wasi_clock_res_get(self, clock_id: int, ret_ptr: int) -> int:
        if clock_id > 1:
            return abi.WASI_NOTSUP
        return abi.WASI_SUCCESS if self.memory.write_u64(ret_ptr, 1000) else abi.WASI_FAULT  # type: ignore[union-attr]

    def wasi_random_get(self, ptr: int, size: int) -> int:
        if size > 65536:
            return abi.WASI_INVAL
        return abi.WASI_SUCCESS if self.memory.write(ptr, os.urandom(size)) else abi.WASI_FAULT  # type: ignore[union-attr]

    def _zero_sizes(self, count_ptr: int, size_ptr: int) -> int:
        return abi.WASI_SUCCESS if self.memory.write_u32_pair(count_ptr, 0, size_ptr, 0) else abi.WASI_FAULT  # type: ignore[union-attr]

    def wasi_environ_sizes_get(self, count_ptr: int, size_ptr: int) -> int:
        return self._zero_sizes(count_ptr, size_ptr)

    def wasi_args_sizes_get(self, count_ptr: int, size_ptr: int) -> int:
        return self._zero_sizes(count_ptr, size_ptr)

    def wasi_environ_get(self, _array: int, _buffer: int) -> int:
        return abi.WASI_SUCCESS

    def wasi_args_get(self, _array: int, _buffer: int) -> int:
        return abi.WASI_SUCCESS

    def wasi_sched_yield(self) -> int:
        return abi.WASI_SUCCESS

    def wasi_proc_exit(self, code: int) -> None:
        raise GuestExit(f"module called proc_exit({code})")
