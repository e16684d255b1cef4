"""Downstream connections served on greenlets: a reader greenlet per connection, a greenlet per request.

The shape every listener can use: TLS, ordered protocols (replies in request
order, pipelines), and filters that block. A listener whose requests can be
served without ever waiting uses :mod:`metaproxy.evented` instead, which
shares this module's request path (:meth:`DownstreamConnection.begin` and
:meth:`DownstreamConnection.finish`).
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from typing import Any

from gevent import get_hub
from gevent.event import Event
from gevent.lock import Semaphore

from metaproxy.chain import RequestContext
from metaproxy.codec import DONE, CodecError, Direction
from metaproxy.message import ErrorType, MessageType, Metadata, ProxyError, ResponseStatus
from metaproxy.netio import READ_SIZE, SCRATCH, SCRATCH_VIEW, kernel_socket, send_all, send_now
from metaproxy.runner import RUNNER
from metaproxy.stats import ListenerStats
from metaproxy.upstream.pool import SESSION_KEY, SendOrder

log = logging.getLogger("metaproxy.server")

_STREAMS = (MessageType.STREAM_INIT, MessageType.STREAM_DATA, MessageType.STREAM_CLOSE)
# Enum members read per request, as globals (a class attribute read of an enum is slow on 3.11).
_HEARTBEAT = MessageType.HEARTBEAT
_ONEWAY = MessageType.ONEWAY
_ERROR = ResponseStatus.ERROR


class BufferBudget:
    """Bytes of replies waiting to be written to slow clients, across all connections of the process.

    Each connection also has its own cap (``max_buffered_bytes``); when either
    is exceeded the connection stops reading new requests until its writes
    drain (Envoy's watermarks), so a client that never reads cannot make the
    proxy buffer without bound.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    @property
    def over(self) -> bool:
        return self.used > self.limit


#: One budget per process (set from ``max_buffered_bytes_total`` when the proxy starts).
BUDGET = BufferBudget(256 * 1024 * 1024)


def peer_identity(sock: socket.socket) -> str:
    """The client certificate's URI SAN (SPIFFE id) or subject CN, when the connection has one."""
    if not isinstance(sock, ssl.SSLSocket):
        return ""
    cert = sock.getpeercert()
    if not cert:
        return ""
    for kind, value in cert.get("subjectAltName", ()):  # type: ignore[misc, str-unpack]
        if kind == "URI":
            return str(value)
    for rdn in cert.get("subject", ()):
        for key, value in rdn:  # type: ignore[misc, str-unpack]
            if key == "commonName":
                return str(value)
    return ""


class DownstreamConnection:
    """One client connection: a reader loop, requests in flight, and a write lock."""

    def __init__(self, listener: Any, sock: socket.socket, address: tuple[str, int]) -> None:
        self.listener = listener
        self.sock = sock
        self.peer = f"{address[0]}:{address[1]}" if address else ""
        self.identity = peer_identity(sock)
        self.codec = listener.new_codec(Direction.REQUEST)
        self.active = 0
        self.closed = False
        #: For the listener's sweeper: idle and slow-request (slowloris) timeouts.
        self.last_activity = time.monotonic()
        self.partial_since = 0.0
        self._write_lock = Semaphore()
        #: The kernel socket under gevent's, for the write fast path (None for TLS: it must encrypt).
        self._raw = kernel_socket(sock)
        #: Bytes this connection holds: requests in flight plus replies not yet taken by the kernel.
        #: Over ``max_buffered_bytes`` the reader stops reading (a watermark, as Envoy has).
        self.buffered = 0
        self._writable = Event()
        self._writable.set()
        self._slots = Semaphore(listener.config.max_requests_per_connection)
        #: Requests handed to their own greenlet and not yet finished (multiplexing protocols).
        self.jobs = 0
        #: Ordered protocols: upstream connections (and endpoints) this connection holds.
        self.leases: dict[Any, Any] | None = None if listener.multiplexing else {}
        self._max_batch = listener.config.max_requests_per_connection
        if not isinstance(sock, ssl.SSLSocket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def run(self) -> None:
        listener = self.listener
        stats: ListenerStats = listener.stats
        sock = self.sock
        buffer = bytearray()
        spawn = listener.multiplexing
        batch: list[Metadata] = []  # ordered protocols: the requests of one read, served as a pipeline
        max_buffered = listener.config.max_buffered_bytes
        # Plain sockets: wait for readability first, then read the real socket once. gevent's
        # recv_into would try first, fail with EAGAIN (a wasted system call per request on a
        # request/response connection), then wait. TLS may hold decrypted bytes: it reads as usual.
        readable = getattr(sock, "_read_event", None)
        raw = self._raw if readable is not None else None
        wait = get_hub().wait
        drained = False
        try:
            while not self.closed:
                if self.buffered > max_buffered or BUDGET.used > BUDGET.limit:
                    self._wait_writable(max_buffered)
                if raw is not None and drained:
                    wait(readable)
                    try:
                        n = raw.recv_into(SCRATCH)
                    except (BlockingIOError, InterruptedError):
                        continue
                else:
                    n = sock.recv_into(SCRATCH)
                drained = n < READ_SIZE
                if not n:
                    if self.active:
                        stats.cx_destroy_remote_with_active_rq.inc()
                    return
                self.last_activity = time.monotonic()
                buffer += SCRATCH_VIEW[:n]
                while buffer:
                    md = Metadata()
                    try:
                        if not self.decode_next(buffer, md):
                            break
                    except CodecError as exc:
                        self._serve_batch(batch)
                        self._decode_failed(md, exc)
                        return
                    if md.get("message_type") is _HEARTBEAT:
                        self._serve_batch(batch)
                        self.answer_heartbeat(md)
                        continue
                    if spawn:
                        self._slots.acquire()  # backpressure: stop reading at max requests in flight
                        self.buffered += len(md.frame)
                        BUDGET.used += len(md.frame)
                        self.jobs += 1
                        RUNNER.spawn(self._serve_slot, md)
                    else:
                        batch.append(md)
                        if len(batch) >= self._max_batch:
                            self._serve_batch(batch)
                if batch:
                    self._serve_batch(batch)
        except OSError as exc:
            log.debug("connection from %s: %s", self.peer, exc)
        finally:
            self.close()

    def decode_next(self, buffer: bytearray, md: Metadata) -> bool:
        """Decode the next request into ``md``: True when one was whole, False to wait for more bytes.

        CodecError for bad bytes, and for an incomplete message already over
        ``max_message_bytes``. Notes when a partial message started (the
        sweeper's slow-request timeout).
        """
        if self.codec.decode(buffer, md) is DONE:
            stats: ListenerStats = self.listener.stats
            stats.request_decoding_success.value += 1  # (stats: plain increments on the hot path)
            self.partial_since = 0.0
            return True
        if not self.partial_since:
            self.partial_since = self.last_activity
        if len(buffer) > self.listener.config.max_message_bytes:
            raise CodecError(f"incomplete message already {len(buffer)} bytes, over max_message_bytes")
        return False

    def answer_heartbeat(self, md: Metadata) -> None:
        """A client's keepalive: the codec's reply, if its protocol has one; never a request."""
        self.listener.stats.request_heartbeat.inc()
        out = bytearray()
        self.codec.heartbeat_reply(md, out)
        if out:
            self.send(out)

    def _serve_batch(self, batch: list[Metadata]) -> None:
        """Serve an ordered protocol's requests of one read; replies leave in request order.

        One request is served inline. Several (a client's pipeline) are served
        concurrently so they share the upstream connection as a pipeline too,
        their upstream sends kept in client order by a SendOrder, and their
        replies are written back together in that order.
        """
        if not batch:
            return
        if len(batch) == 1 or any(md.get("session") is True for md in batch):
            for md in batch:
                out = self.serve(md)
                if out and not self.closed:
                    self.send(out)
            batch.clear()
            if self.listener.draining:
                self._close_if_done()
            return
        order = SendOrder()
        replies: list[bytearray | None] = [None] * len(batch)
        left = [len(batch)]
        all_done = Event()

        def serve_one(index: int, md: Metadata) -> None:
            try:
                replies[index] = self.serve(md, (order, index))
            finally:
                left[0] -= 1
                if not left[0]:
                    all_done.set()

        for i, md in enumerate(batch):
            RUNNER.spawn(serve_one, i, md)
        batch.clear()
        all_done.wait()
        data = b"".join(r for r in replies if r)
        if data and not self.closed:
            self.send(data)
        if self.listener.draining:
            self._close_if_done()

    def _decode_failed(self, md: Metadata, exc: CodecError) -> None:
        stats: ListenerStats = self.listener.stats
        stats.request_decoding_error.inc()
        log.warning("listener %s: bad request bytes from %s: %s; closing the connection",
                    self.listener.name, self.peer, exc)
        if "request_id" in md:
            out = bytearray()
            try:
                self.codec.on_error(md, ProxyError(ErrorType.UNSPECIFIED, f"malformed request: {exc}"), out)
            except Exception:  # the message was malformed: a reply may be impossible
                out = bytearray()
            if out:
                try:
                    self.send(out)
                except OSError:
                    pass

    def _serve_slot(self, md: Metadata) -> None:
        try:
            out = self.serve(md)
            if out and not self.closed:
                try:
                    self.send(out)
                except OSError as exc:
                    log.debug("write to %s failed: %s", self.peer, exc)
                    self.close()
        finally:
            self._slots.release()
            self.jobs -= 1
            self._release_bytes(len(md.frame))
            if self.listener.draining:
                self._close_if_done()

    def _close_if_done(self) -> None:
        """Draining: close as soon as nothing read is left unanswered.

        These protocols have no GOAWAY; a busy client is never quiet, so waiting
        for quiet would run out the drain timeout and cut requests in flight.
        A request the client sends in this instant is not read, so it was not
        processed and the client may retry it safely (Envoy drains the same way).
        """
        if not self.active and not self.partial_since and not self.jobs:
            self.close()

    def serve(self, md: Metadata, order: Any = None) -> bytearray:
        """Run one request through the chain; return its reply's bytes (empty if it has none)."""
        ctx = self.begin(md, order)
        return self.finish(ctx, self.run_chain(ctx))

    def begin(self, md: Metadata, order: Any = None) -> RequestContext:
        """Count the request and make its context (the first half of :meth:`serve`)."""
        listener = self.listener
        stats: ListenerStats = listener.stats
        stats.request.value += 1  # (stats: plain increments on the hot path)
        stats.request_active.value += 1
        self.active += 1
        ctx = RequestContext(md, listener.name, listener.protocol)
        ctx.downstream_address = self.peer
        if self.identity:
            ctx.peer_identity = md["peer_identity"] = self.identity
        ctx.routes = listener.routes.current
        ctx.downstream_id = md.get("request_id")
        if self.leases is not None:  # ordered protocols
            ctx.leases = self.leases
            if md.get("session") is True:  # the client changes its session: later upstream connections replay it
                self._end_leases()
        if order is not None:
            ctx.order = order
        if md.get("message_type") is _ONEWAY:
            stats.request_oneway.inc()
        for obs in listener.start_observers:
            obs.request_start(ctx)
        return ctx

    def run_chain(self, ctx: RequestContext) -> ProxyError | None:
        """The request's filters; the error that answers it, if one does (a filter's bug included)."""
        if ctx.metadata.get("message_type") in _STREAMS:
            error = ctx.error = ProxyError(ErrorType.UNSPECIFIED, "streams are not supported by this proxy")
            return error
        return self.listener.chain.run_request(ctx)  # (a filter's bug is its request's error)

    def finish(self, ctx: RequestContext, error: ProxyError | None) -> bytearray:
        """Response filters, the reply's bytes, stats and observers (the second half of :meth:`serve`)."""
        listener = self.listener
        stats: ListenerStats = listener.stats
        md = ctx.metadata
        codec = self.codec
        oneway = md.get("message_type") is _ONEWAY
        out = bytearray()
        try:
            response = ctx.response_metadata
            if error is None and response is not None and listener.chain.response_hooks:
                try:
                    listener.chain.run_response(ctx)
                except ProxyError as err:
                    error = ctx.error = err
            if error is not None:
                stats.local_response_error[error.kind].inc()
                ctx.response_flags = error.flags
                if not oneway:
                    md["request_id"] = ctx.downstream_id
                    codec.on_error(md, error, out)
            elif response is not None:
                failed = response.get("response_status") is _ERROR
                if failed:
                    stats.response_error.value += 1
                else:
                    stats.response_success.value += 1
                response["request_id"] = ctx.downstream_id
                codec.encode(response, ctx.response_mutation, out)
                if self.leases is not None and not failed and md.get("session") is True:
                    self.leases.setdefault(SESSION_KEY, []).append(md.frame)
        except Exception as exc:  # a filter or codec bug must fail its request only
            error = _internal_error(ctx, listener.name, exc)
            stats.local_response_error[ErrorType.UNSPECIFIED].inc()
            out = bytearray()
            if not oneway:
                md["request_id"] = ctx.downstream_id
                try:
                    codec.on_error(md, error, out)
                except Exception:
                    log.exception("codec on_error failed")
                    out = bytearray()
        finally:
            self.active -= 1
            stats.request_active.value -= 1
            order = ctx.order
            if order is not None:  # a request answered locally still passes the turn on
                order[0].wait(order[1])
                order[0].done(order[1])
        ctx.end_time = end = time.monotonic()  # (observers read it: an access log's %DURATION%)
        stats.request_done(md.get("method") or "", (end - ctx.start_time) * 1000.0)
        if codec.mutations_dropped:
            stats.mutation_dropped.inc(codec.mutations_dropped)
            codec.mutations_dropped = 0
        ctx.bytes_sent = len(out)
        for obs in listener.end_observers:
            obs.request_end(ctx)
        return out

    def send(self, data: bytes | bytearray | memoryview) -> None:
        raw = self._raw
        if raw is not None and not self._write_lock.locked():
            # Nobody is mid-write, so bytes written now keep their order; the kernel usually
            # takes a reply whole, and then nothing was buffered and nothing needs accounting.
            sent = send_now(raw, data)
            if sent == len(data):
                return
            data = memoryview(data)[sent:]
        size = len(data)
        self.buffered += size
        BUDGET.used += size
        try:
            with self._write_lock:
                send_all(self.sock, data)
        finally:
            self._release_bytes(size)

    def _release_bytes(self, size: int) -> None:
        self.buffered -= size
        BUDGET.used -= size
        if not self._writable.is_set() and self.buffered <= self.listener.config.max_buffered_bytes:
            self._writable.set()

    def _wait_writable(self, max_buffered: int) -> None:
        """Stop reading until this connection's (and the process's) unsent replies drain."""
        self.listener.stats.cx_read_paused.inc()
        while not self.closed and (self.buffered > max_buffered or BUDGET.over):
            self._writable.clear()
            self._writable.wait(0.1 if BUDGET.over else None)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._writable.set()  # a reader paused on the watermark must see the close
        if self.active:
            self.listener.stats.cx_destroy_local_with_active_rq.inc()
        try:
            self.sock.close()
        except OSError:
            pass
        if self.leases:
            self._end_leases()
            self.leases.clear()

    def _end_leases(self) -> None:
        """Give back the upstream connections this connection holds (not its session record)."""
        assert self.leases is not None
        for key, value in list(self.leases.items()):
            if key == SESSION_KEY:
                continue
            del self.leases[key]
            if hasattr(key, "end_lease"):
                key.end_lease(value)



def _internal_error(ctx: RequestContext, listener: str, exc: Exception) -> ProxyError:
    log.error("listener %s: request failed", listener, exc_info=exc)
    error = ctx.error = ProxyError.internal(exc)
    return error
