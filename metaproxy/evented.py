"""Downstream connections served in the event loop's I/O callbacks, with no greenlet switch per request.

Why: measured with ``bench/icount.py --relay``, an L4 relay whose reads are
I/O watcher callbacks (bench/callback_relay.py) costs ~12,100 instructions per
request; the same relay with a greenlet per direction on gevent's socket
methods (bench/gevent_relay.py) ~75,800. Each switch between the hub and a
greenlet is ~4,600 instructions; a proxied request took about ten of them
(reader, request greenlet, write batching, the wait for the upstream, the
upstream reader). Served here, a tinyrpc request costs ~115,000 instructions
instead of ~141,000 (docs/performance.md).

So when nothing on a request's way can wait (a multiplexing codec, a plain
socket, filters that all say ``blocking = False``), a listener serves its
connections here: the read watcher's callback decodes the requests and runs
the chain in the hub; the router queues each request on an upstream
connection and returns (``ctx.resume``), and the upstream connection's own
read callback resumes it with the response: response filters, encode, write,
observers, all still in the hub. What must wait (connecting upstream, a
retry's backoff, a write the kernel does not take at once) moves to a
greenlet or a write watcher, never into the hub.

Bounds are those of the greenlet path: ``max_requests_per_connection`` and
the buffered-bytes watermarks (per connection and per process) stop the
read watcher until requests finish and replies drain.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

from gevent import get_hub

from metaproxy.chain import RequestContext
from metaproxy.codec import CodecError
from metaproxy.downstream import _HEARTBEAT, BUDGET, DownstreamConnection
from metaproxy.message import Metadata, ProxyError
from metaproxy.netio import SCRATCH, SCRATCH_VIEW, send_now

log = logging.getLogger("metaproxy.server")

#: How often a connection paused by the process-wide buffer budget looks again (other
#: connections' writes free the budget, and they do not know who waits for it).
BUDGET_RECHECK = 0.1


class CallbackConnection(DownstreamConnection):
    """A plain-socket connection of a listener whose requests never wait: see the module docstring."""

    def __init__(self, listener: Any, sock: socket.socket, address: tuple[str, int]) -> None:
        super().__init__(listener, sock, address)
        assert self._raw is not None, "TLS connections are served on greenlets"
        self.loop = get_hub().loop
        self._reader = self.loop.io(self._raw.fileno(), 1)
        self._writer: Any = None  # a write watcher, while the kernel has not taken every byte
        self._out: bytearray | None = None  # the bytes it has not taken
        self._buffer = bytearray()
        self._paused = False
        self._recheck: Any = None
        config = listener.config
        self._max_jobs = config.max_requests_per_connection
        self._max_buffered = config.max_buffered_bytes

    def start(self) -> None:
        self._reader.start(self._on_readable)

    # -- reading ----------------------------------------------------------------------
    def _on_readable(self) -> None:
        try:
            n = self._raw.recv_into(SCRATCH)  # type: ignore[union-attr]
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.debug("connection from %s: %s", self.peer, exc)
            self.close()
            return
        if not n:
            if self.active:
                self.listener.stats.cx_destroy_remote_with_active_rq.inc()
            self.close()
            return
        self.last_activity = time.monotonic()
        self._buffer += SCRATCH_VIEW[:n]
        try:
            self._take_requests()
        except Exception:  # noqa: BLE001 - in the hub: a bug closes this connection, nothing else
            log.exception("listener %s: connection from %s failed", self.listener.name, self.peer)
            self.close()

    def _take_requests(self) -> None:
        """Decode and serve every whole request in the buffer, until it runs out or a bound pauses us."""
        buffer = self._buffer
        while buffer and not self.closed:
            if self.jobs >= self._max_jobs or self.buffered > self._max_buffered or BUDGET.used > BUDGET.limit:
                self._pause()
                return
            md = Metadata()
            try:
                if not self.decode_next(buffer, md):
                    return
            except CodecError as exc:
                self._decode_failed(md, exc)
                self.close()
                return
            if md.get("message_type") is _HEARTBEAT:
                self.answer_heartbeat(md)
                continue
            size = len(md.frame)  # serve it: the request and its reply count against the watermarks
            self.buffered += size
            BUDGET.used += size
            self.jobs += 1
            ctx = self.begin(md)
            ctx.resume = self._resume
            error = self.run_chain(ctx)
            if not ctx.suspended:
                self._resume(ctx, error)

    def _resume(self, ctx: RequestContext, error: ProxyError | None) -> None:
        """Finish a request: now, or when its upstream answers (from the upstream's read callback)."""
        try:
            if error is not None:
                ctx.error = error
            out = self.finish(ctx, error)
            if out:
                self.send(out)
        except Exception:  # noqa: BLE001 - an observer's bug: this request is lost, the connection is not
            log.exception("listener %s: finishing a request failed", self.listener.name)
        finally:
            self.jobs -= 1
            self._release_bytes(len(ctx.metadata.frame))
            if self.listener.draining:
                self._close_if_done()

    # -- pausing (the bounds of the greenlet path's reader) -------------------------------
    def _pause(self) -> None:
        if not self._paused:
            self._paused = True
            self._reader.stop()
            if self.jobs < self._max_jobs:  # a buffer watermark, not the request limit
                self.listener.stats.cx_read_paused.inc()
        if BUDGET.used > BUDGET.limit and self._recheck is None:
            self._recheck = self.loop.timer(BUDGET_RECHECK)
            self._recheck.start(self._unpause)

    def _release_bytes(self, size: int) -> None:
        # The greenlet path's version also wakes a reader waiting on an Event; here the reader is a
        # watcher, restarted by _unpause (not nested in the request that freed the bytes).
        self.buffered -= size
        BUDGET.used -= size
        if self._paused:
            self.loop.run_callback(self._unpause)

    def _unpause(self) -> None:
        if self._recheck is not None:
            self._recheck.close()
            self._recheck = None
        if not self._paused or self.closed:
            return
        self._paused = False
        try:
            self._take_requests()
        except Exception:  # noqa: BLE001
            log.exception("listener %s: connection from %s failed", self.listener.name, self.peer)
            self.close()
            return
        if not self._paused and not self.closed:
            self._reader.start(self._on_readable)

    # -- writing --------------------------------------------------------------------
    def send(self, data: bytes | bytearray | memoryview) -> None:
        """Write now what the kernel takes; a write watcher writes the rest, in order. Never blocks."""
        if self.closed:
            return
        if self._out is not None:
            self._out += data
            self.buffered += len(data)
            BUDGET.used += len(data)
            return
        try:
            sent = send_now(self._raw, data)  # type: ignore[arg-type]
        except OSError as exc:
            log.debug("write to %s failed: %s", self.peer, exc)
            self.close()
            return
        if sent == len(data):
            return
        self._out = bytearray(memoryview(data)[sent:])
        self.buffered += len(self._out)
        BUDGET.used += len(self._out)
        if self._writer is None:
            self._writer = self.loop.io(self._raw.fileno(), 2)  # type: ignore[union-attr]
        self._writer.start(self._on_writable)

    def _on_writable(self) -> None:
        out = self._out
        if out is None or self.closed:
            return
        try:
            sent = send_now(self._raw, out)  # type: ignore[arg-type]
        except OSError as exc:
            log.debug("write to %s failed: %s", self.peer, exc)
            self.close()
            return
        del out[:sent]
        if not out:
            self._out = None
            self._writer.stop()
        self._release_bytes(sent)

    def close(self) -> None:
        if self.closed:
            return
        self._reader.close()
        if self._writer is not None:
            self._writer.close()
        if self._recheck is not None:
            self._recheck.close()
            self._recheck = None
        out, self._out = self._out, None
        if out:  # a last try for what is queued (a protocol error reply before closing, say)
            try:
                send_now(self._raw, out)  # type: ignore[arg-type]
            except OSError:
                pass
            self._release_bytes(len(out))
        super().close()
        listener = self.listener
        if self in listener.connections:
            listener.connections.discard(self)
            listener.stats.cx_active.dec()
