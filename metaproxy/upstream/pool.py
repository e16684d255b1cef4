"""Upstream connections and the pools that share them between requests.

Two shapes, chosen by the codec's ``multiplexing`` flag:

* :class:`MultiplexPool` — a few connections per endpoint, many requests in
  flight on each. The request id is rewritten to a per-connection id on the
  way up and restored on the way down; an I/O watcher callback per
  connection (a reader greenlet for TLS) hands each response to whatever
  waits for that id: a greenlet, or a request being served in the hub's
  callbacks (metaproxy/evented.py).
* :class:`ExclusivePool` — protocols whose responses come strictly in order
  (no ids): one request at a time per connection, read inline, and the
  connection goes back to an idle list.

Every wait is bounded: connect by ``connect_timeout``, a request by its
timeout. A connection that closes or sends garbage fails every request on it
at once.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import gevent
from gevent.event import AsyncResult
from gevent.hub import Waiter
from gevent.lock import Semaphore

from metaproxy.codec import DONE, Codec, CodecError
from metaproxy.message import ErrorType, MessageType, Metadata, ProxyError
from metaproxy.netio import SCRATCH, SCRATCH_VIEW, kernel_socket, send_all, send_now
from metaproxy.stats import ClusterStats
from metaproxy.upstream.endpoint import Endpoint
from metaproxy.upstream.waiter import Call as _Call

log = logging.getLogger("metaproxy.upstream")

#: Largest request id handed out upstream: int32 so every protocol can carry it.
MAX_UPSTREAM_ID = 2**31 - 1

#: Response flags (Envoy's) that tell retries what went wrong.
CONNECT_FAILURE = "UF"
RESET = "UC"
TIMEOUT = "UT"
OVERFLOW = "UO"
PROTOCOL_ERROR = "UPE"

CodecFactory = Callable[[], Codec]
_HEARTBEAT = MessageType.HEARTBEAT  # a global: enum class attribute reads are slow on 3.11
#: Key in a downstream connection's leases holding its session-state requests (frames).
SESSION_KEY = "__session__"


class Limits:
    """Cluster-wide circuit-breaker counters shared by every pool of a cluster.

    ``pending`` counts requests waiting for an upstream connection to be
    established (the only place a request queues: pools never wait for a
    busy connection, they open another up to ``max_connections``).
    """

    __slots__ = ("max_connections", "max_requests", "max_pending", "connections", "requests", "pending")

    def __init__(self, max_connections: int, max_requests: int, max_pending: int = 1024) -> None:
        self.max_connections = max_connections
        self.max_requests = max_requests
        self.max_pending = max_pending
        self.connections = 0
        self.requests = 0
        self.pending = 0

    def start_pending(self, stats: ClusterStats) -> None:
        if self.pending >= self.max_pending:
            stats.upstream_rq_pending_overflow.inc()
            raise ProxyError(ErrorType.OVER_LIMIT, "too many requests waiting for an upstream connection", OVERFLOW)
        self.pending += 1


def _connect_error(endpoint: Endpoint, exc: BaseException) -> ProxyError:
    return ProxyError(ErrorType.NO_HEALTHY_UPSTREAM, f"upstream connect error to {endpoint.address}: {exc}",
                      CONNECT_FAILURE)


class UpstreamTls:
    """TLS origination settings of a cluster: a client context and the SNI name to send."""

    __slots__ = ("context", "server_name")

    def __init__(self, context: ssl.SSLContext, server_name: str | None) -> None:
        self.context = context
        self.server_name = server_name


def _open_socket(endpoint: Endpoint, timeout: float, stats: ClusterStats, limits: Limits,
                 tls: UpstreamTls | None = None) -> socket.socket:
    if limits.connections >= limits.max_connections:
        stats.upstream_cx_overflow.inc()
        raise ProxyError(ErrorType.OVER_LIMIT, "upstream connection limit reached", OVERFLOW)
    try:
        sock = socket.create_connection((endpoint.host, endpoint.port), timeout=timeout)
    except TimeoutError as exc:
        stats.upstream_cx_connect_fail.inc()
        stats.upstream_cx_connect_timeout.inc()
        raise _connect_error(endpoint, exc) from None
    except OSError as exc:
        stats.upstream_cx_connect_fail.inc()
        raise _connect_error(endpoint, exc) from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if tls is not None:
        try:
            sock = tls.context.wrap_socket(sock, server_hostname=tls.server_name or endpoint.host)
        except (ssl.SSLError, OSError) as exc:
            sock.close()
            stats.upstream_cx_connect_fail.inc()
            raise _connect_error(endpoint, exc) from None
    sock.settimeout(None)
    limits.connections += 1
    stats.upstream_cx_total.inc()
    stats.upstream_cx_active.inc()
    return sock


def _encode(codec: Codec, metadata: Metadata, mutation: dict, out: bytearray, stats: ClusterStats) -> None:
    codec.encode(metadata, mutation, out)
    if codec.mutations_dropped:  # the wire format could not carry the mutation
        stats.mutation_dropped.inc(codec.mutations_dropped)
        codec.mutations_dropped = 0


class WriteBatch:
    """Bytes for one upstream socket from requests ready in the same loop iteration, sent in one write.

    The first request to queue calls ``flush``: it yields once so the others
    join, then writes everything (fewer syscalls under load). ``lock`` keeps
    writes to the socket whole when a send would block.
    """

    __slots__ = ("out", "batching", "lock")

    def __init__(self) -> None:
        self.out = bytearray()
        self.batching = False
        self.lock = Semaphore()

    def flush(self, owner: Any) -> None:
        """Yield once, then send what is queued on ``owner.sock`` (read after the yield: it may be gone)."""
        self.batching = True
        try:
            gevent.sleep(0)
        finally:
            self.batching = False
        data, self.out = self.out, bytearray()
        sock = owner.sock
        if data and sock is not None:
            with self.lock:
                send_all(sock, data)


TIMED_OUT = object()


def _deliver(call: Any, value: object) -> None:
    """Resolve a pending request once (the response, an error or the timer, whichever comes first). In the hub."""
    if not call.done:
        call.done = True
        timer = call.timer
        if timer is not None:
            timer.close()
            if value is TIMED_OUT:
                call.conn.pending.pop(call.upstream_id, None)
        call.switch(value)


class MultiplexConnection:
    """One connection carrying many requests, matched to responses by request id.

    It lives in the hub's callbacks: an I/O watcher reads and decodes the
    responses and hands each to what waits for it; requests queued in one
    loop iteration leave in one write, made by a loop callback. Only a write
    the kernel does not take at once, a TLS connection, and connecting use a
    greenlet.
    """

    def __init__(self, endpoint: Endpoint, codec: Codec, stats: ClusterStats, limits: Limits,
                 connect_timeout: float, tls: UpstreamTls | None = None) -> None:
        self.endpoint = endpoint
        self.tls = tls
        self.codec = codec
        #: How responses are decoded: ``codec.decode_passthrough`` until a request that reads its
        #: response is sent here (see :meth:`MultiplexPool.read_responses_fully`), then ``codec.decode``.
        self.decode_response: Callable[[bytearray, Metadata], Any] = codec.decode_passthrough
        self.stats = stats
        self.limits = limits
        self.connect_timeout = connect_timeout
        self.loop = gevent.get_hub().loop
        self.sock: socket.socket | None = None
        self.raw: socket.socket | None = None  # the kernel socket (None for TLS: it must encrypt)
        self.pending: dict[int, Any] = {}
        self.next_id = 0
        self.closed = False
        self.buffer = bytearray()
        #: Encoded requests not yet written, and the oneway calls told once they are.
        self.out = bytearray()
        self.oneways: list[Any] = []
        self.flush_scheduled = False
        self.writing = False  # a greenlet is writing what the kernel did not take at once
        self._connecting: AsyncResult | None = None
        self._reader: gevent.Greenlet | None = None
        self._watcher: Any = None
        self.last_used = time.monotonic()

    def _ensure_connected(self) -> None:
        if self.sock is not None:
            return
        self.limits.start_pending(self.stats)  # waiting for a connection: max_pending_requests
        try:
            if self._connecting is not None:  # another request is connecting: wait for it
                self._connecting.get()
                return
            self._connecting = AsyncResult()
            try:
                self.sock = _open_socket(self.endpoint, self.connect_timeout, self.stats, self.limits, self.tls)
            except ProxyError as err:
                self.closed = True
                self._connecting.set_exception(err)
                raise
            self.raw = kernel_socket(self.sock)
            if self.raw is None:
                self._reader = gevent.spawn(self._read_loop)
            else:
                self._watcher = self.loop.io(self.raw.fileno(), 1)
                self._watcher.start(self._on_readable)
            self._connecting.set(None)
        finally:
            self.limits.pending -= 1

    def start(self, metadata: Metadata, mutation: dict, timeout: float | None, oneway: bool, call: Any) -> None:
        """Queue one request; ``call`` (see :class:`metaproxy.upstream.waiter.Call`) is resolved later, in the
        hub. Never blocks.

        A oneway ``call`` is resolved with None once its bytes are written (or
        with the ProxyError if they cannot be); any other with the response,
        a ProxyError, or ``TIMED_OUT`` after ``timeout``.
        """
        self.last_used = time.monotonic()
        self.next_id = upstream_id = self.next_id + 1 if self.next_id < MAX_UPSTREAM_ID else 1
        downstream_id = metadata.get("request_id")
        metadata["request_id"] = upstream_id
        try:
            _encode(self.codec, metadata, mutation, self.out, self.stats)
        finally:
            metadata["request_id"] = downstream_id
        if oneway:
            self.oneways.append(call)
        else:
            self.pending[upstream_id] = call
            call.conn = self
            call.upstream_id = upstream_id
            if timeout is not None:
                timer = call.timer = self.loop.timer(timeout)
                timer.start(_deliver, call, TIMED_OUT)
        if not self.flush_scheduled:
            self._schedule_flush()

    def request(self, metadata: Metadata, mutation: dict, timeout: float | None, oneway: bool) -> Metadata | None:
        """Send one request and wait for its response on this greenlet."""
        if self.sock is None:
            self._ensure_connected()
        call = _Call()
        self.start(metadata, mutation, timeout, oneway, call)
        result = call.get()
        if result is TIMED_OUT:
            raise timed_out(timeout)
        if isinstance(result, ProxyError):
            raise result
        return result  # type: ignore[return-value]

    # -- writing (a loop callback: every request queued in this iteration leaves in one write) ------
    def _schedule_flush(self) -> None:
        self.flush_scheduled = True
        self.loop.run_callback(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        oneways = self.oneways
        if oneways:
            self.oneways = []
        error = None
        if self.sock is None:
            error = ProxyError(ErrorType.UNSPECIFIED, "upstream connection closed", RESET)
        elif not self.writing and self.out:
            data, self.out = self.out, bytearray()
            try:
                sent = send_now(self.raw, data) if self.raw is not None else 0
            except OSError as exc:
                error = _write_failed(exc)
                self.close(error)
            else:
                if sent < len(data):
                    self.out[:0] = memoryview(data)[sent:]
                    self.writing = True
                    gevent.spawn(self._write_rest)
        for call in oneways:
            _deliver(call, error)

    def _write_rest(self) -> None:
        try:
            while self.out and self.sock is not None:
                data, self.out = self.out, bytearray()
                send_all(self.sock, data)
        except OSError as exc:
            self.close(_write_failed(exc))
        finally:
            self.writing = False

    # -- reading ---------------------------------------------------------------
    def _on_readable(self) -> None:
        """The I/O watcher's callback (in the hub): read what arrived, answer whoever waits for it."""
        try:
            n = self.raw.recv_into(SCRATCH)  # type: ignore[union-attr]
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.close(ProxyError(ErrorType.UNSPECIFIED, f"upstream connection reset: {exc}", RESET))
            return
        if not n:
            self.close(ProxyError(ErrorType.UNSPECIFIED, "upstream connection closed", RESET))
            return
        self.buffer += SCRATCH_VIEW[:n]
        error = self._take_responses(_deliver)
        if error is not None:
            self.close(error)

    def _read_loop(self) -> None:
        """TLS connections: a greenlet reads (the SSL object may hold decrypted bytes a watcher would miss)."""
        sock = self.sock
        error = ProxyError(ErrorType.UNSPECIFIED, "upstream connection closed", RESET)
        deliver_later = partial(self.loop.run_callback, _deliver)
        try:
            while True:
                n = sock.recv_into(SCRATCH)  # type: ignore[union-attr]
                if not n:
                    break
                self.buffer += SCRATCH_VIEW[:n]
                failed = self._take_responses(deliver_later)
                if failed is not None:
                    error = failed
                    break
        except OSError as exc:
            error = ProxyError(ErrorType.UNSPECIFIED, f"upstream connection reset: {exc}", RESET)
        finally:
            self.close(error)

    def _take_responses(self, deliver: Callable[[Any, object], Any]) -> ProxyError | None:
        """Decode every whole response in the buffer and deliver it; the error that must close us, if any."""
        buffer = self.buffer
        codec = self.codec
        decode = self.decode_response
        pending = self.pending
        try:
            while buffer and not self.closed:
                md = Metadata()
                if decode(buffer, md) is not DONE:
                    break
                if md.get("message_type") is _HEARTBEAT:
                    # servers ping idle connections (Dubbo): answer, never match to a request
                    codec.heartbeat_reply(md, self.out)
                    if self.out and not self.flush_scheduled:
                        self._schedule_flush()
                    continue
                call = pending.pop(md.get("request_id"), None)  # type: ignore[arg-type]
                if call is None:
                    if not 0 < (md.get("request_id") or 0) <= self.next_id:
                        self.stats.upstream_rq_unknown_id.inc()
                        return ProxyError(ErrorType.BAD_RESPONSE,
                                          f"upstream answered request id {md.get('request_id')!r} never sent",
                                          PROTOCOL_ERROR)
                else:
                    deliver(call, md)
        except CodecError as exc:
            self.stats.upstream_rq_decoding_error.inc()
            log.warning("bad response from %s: %s; closing the connection", self.endpoint.address, exc)
            return ProxyError(ErrorType.BAD_RESPONSE, f"bad upstream response: {exc}", PROTOCOL_ERROR)
        return None

    def close(self, error: ProxyError | None = None) -> None:
        if self.closed and self.sock is None:
            return
        self.closed = True
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None
        sock, self.sock = self.sock, None
        if sock is not None:
            self.limits.connections -= 1
            self.stats.upstream_cx_active.dec()
            try:
                sock.close()
            except OSError:
                pass
        err = error or ProxyError(ErrorType.UNSPECIFIED, "upstream connection closed", RESET)
        if self.pending:
            self.stats.upstream_cx_destroy_with_active_rq.inc()
            pending, self.pending = self.pending, {}
            for call in pending.values():
                self.loop.run_callback(_deliver, call, err)
        if self.oneways:
            oneways, self.oneways = self.oneways, []
            for call in oneways:
                self.loop.run_callback(_deliver, call, err)
        reader = self._reader
        if reader is not None and reader is not gevent.getcurrent():
            reader.kill(block=False)


def _write_failed(exc: OSError) -> ProxyError:
    return ProxyError(ErrorType.UNSPECIFIED, f"upstream write failed: {exc}", RESET)


class _Pool:
    """What both pool shapes share: the endpoint, how to make codecs, the cluster's limits and stats."""

    def __init__(self, endpoint: Endpoint, codec_factory: CodecFactory, size: int, stats: ClusterStats,
                 limits: Limits, connect_timeout: float, tls: UpstreamTls | None = None,
                 idle_timeout: float = 60.0) -> None:
        self.endpoint = endpoint
        self.tls = tls
        self.codec_factory = codec_factory
        self.size = size
        self.stats = stats
        self.limits = limits
        self.connect_timeout = connect_timeout
        #: A pooled connection unused this long is closed by the proxy before the upstream's own
        #: idle cutoff can race a request written on it (set it below the upstream's cutoff).
        self.idle_timeout = idle_timeout

    #: True while responses are decoded with ``Codec.decode_passthrough`` (multiplexed pools only).
    passthrough = False

    def read_responses_fully(self) -> None:
        """From now on decode every response whole: a request that reads its response is about to be sent."""


def _failure(exc: Exception, stats: ClusterStats) -> ProxyError:
    """The ProxyError for a connection that broke (OSError) or answered garbage (CodecError)."""
    if isinstance(exc, CodecError):
        stats.upstream_rq_decoding_error.inc()
        return ProxyError(ErrorType.BAD_RESPONSE, f"bad upstream response: {exc}", PROTOCOL_ERROR)
    return ProxyError(ErrorType.UNSPECIFIED, f"upstream connection reset: {exc}", RESET)


def timed_out(timeout: float | None) -> ProxyError:
    return ProxyError(ErrorType.TIMEOUT, f"upstream request timeout after {timeout}s", TIMEOUT)


class MultiplexPool(_Pool):
    """Up to ``size`` connections to one endpoint; each request goes to the least busy one."""

    def __init__(self, endpoint: Endpoint, codec_factory: CodecFactory, size: int, stats: ClusterStats,
                 limits: Limits, connect_timeout: float, tls: UpstreamTls | None = None,
                 idle_timeout: float = 60.0) -> None:
        super().__init__(endpoint, codec_factory, size, stats, limits, connect_timeout, tls, idle_timeout)
        self.connections: list[MultiplexConnection] = []
        #: Responses are only passed back until a request needs more (the router calls
        #: :meth:`read_responses_fully` before sending it): for good, since connections are shared.
        self.passthrough = True

    def read_responses_fully(self) -> None:
        self.passthrough = False
        for conn in self.connections:
            conn.decode_response = conn.codec.decode

    def _pick(self) -> MultiplexConnection:
        conns = self.connections
        best = None
        best_pending = 0
        idle_before = None  # read the clock only if an idle connection must be checked
        for conn in conns:
            if conn.closed:
                continue
            pending = len(conn.pending)
            if not pending and conn.sock is not None:
                if idle_before is None:
                    idle_before = time.monotonic() - self.idle_timeout
                if conn.last_used < idle_before:
                    self.stats.upstream_cx_idle_timeout.inc()
                    conn.close()
                    continue
            if best is None or pending < best_pending:
                best, best_pending = conn, pending
        if best is None or (best_pending and len(conns) < self.size):
            if any(c.closed for c in conns):
                self.connections = conns = [c for c in conns if not c.closed]
            if len(conns) < self.size:
                best = MultiplexConnection(self.endpoint, self.codec_factory(), self.stats, self.limits,
                                           self.connect_timeout, self.tls)
                if not self.passthrough:
                    best.decode_response = best.codec.decode
                conns.append(best)
        assert best is not None
        return best

    def ready_connection(self) -> MultiplexConnection | None:
        """The least busy connection if :meth:`_pick` would choose it without opening, closing or waiting.

        None sends the request the greenlet way (:meth:`request`), which picks
        again and does what must be done: connect, retire an idle connection.
        """
        best = None
        best_pending = 0
        for conn in self.connections:
            if conn.sock is None or conn.closed:
                if conn.closed:
                    self.connections = [c for c in self.connections if not c.closed]
                return None
            pending = len(conn.pending)
            if best is None or pending < best_pending:
                best, best_pending = conn, pending
        if best is None or (best_pending and len(self.connections) < self.size):
            return None
        if not best_pending and best.last_used < time.monotonic() - self.idle_timeout:
            return None
        return best

    def request(self, metadata: Metadata, mutation: dict, timeout: float | None, oneway: bool,
                leases: dict | None = None, order: tuple[SendOrder, int] | None = None) -> Metadata | None:
        conn = self._pick()
        try:
            return conn.request(metadata, mutation, timeout, oneway)
        finally:
            if conn.closed and conn in self.connections:
                self.connections.remove(conn)

    def close(self) -> None:
        for conn in self.connections:
            conn.close()
        self.connections = []


class Turns:
    """Numbered turns taken in order: ``wait(n)`` until turn n comes, ``done(n)`` passes it on.

    Pipelined requests use it twice: to reach an upstream in the client's
    order (SendOrder) and to read their responses in the order they were
    sent (ExclusiveConnection). ``abort`` fails everyone still waiting.
    """

    __slots__ = ("current", "broken", "_waiters")

    def __init__(self) -> None:
        self.current = 0
        self.broken = False
        self._waiters: dict[int, Waiter] = {}

    def wait(self, n: int) -> None:
        while self.current < n:
            if self.broken:
                raise ConnectionResetError("pipelined upstream connection was dropped")
            waiter = Waiter()
            self._waiters[n] = waiter
            waiter.get()

    def done(self, n: int) -> None:
        if n >= self.current:
            self.current = n + 1
            waiter = self._waiters.pop(self.current, None)
            if waiter is not None:
                waiter.hub.loop.run_callback(waiter.switch, None)

    def abort(self) -> None:
        self.broken = True
        waiters, self._waiters = self._waiters, {}
        for waiter in waiters.values():
            waiter.hub.loop.run_callback(waiter.switch, None)


#: The requests of one pipelined batch reach their upstream in the order the client sent them:
#: each waits for its place in the batch before queueing its bytes, and passes it on right after
#: (a request answered locally passes it on when it ends).
SendOrder = Turns


class ExclusiveConnection:
    """A connection whose responses come back in request order.

    Unleased, it carries one request at a time. Leased to a downstream
    connection, it is pipelined: requests are queued in order (``out``,
    flushed together) and each takes a ticket; responses are read in ticket
    order, each by the request that owns the ticket.
    """

    def __init__(self, sock: socket.socket, codec: Codec) -> None:
        self.sock = sock
        self.codec = codec
        self.buffer = bytearray()
        self.last_used = time.monotonic()
        self.batch = WriteBatch()
        self.next_ticket = 0
        self.turns = Turns()

    @property
    def broken(self) -> bool:
        return self.turns.broken

    def take_ticket(self) -> int:
        ticket = self.next_ticket
        self.next_ticket += 1
        return ticket

    def break_pipeline(self) -> None:
        """The response stream can no longer be trusted: wake every waiting request to fail."""
        self.turns.abort()


class ExclusivePool(_Pool):
    """Idle connections to one endpoint, each lent to one request at a time (or leased to a client)."""

    def __init__(self, endpoint: Endpoint, codec_factory: CodecFactory, size: int, stats: ClusterStats,
                 limits: Limits, connect_timeout: float, tls: UpstreamTls | None = None,
                 idle_timeout: float = 60.0) -> None:
        super().__init__(endpoint, codec_factory, size, stats, limits, connect_timeout, tls, idle_timeout)
        self.max_idle = max(self.size, 16)
        self.idle: list[ExclusiveConnection] = []

    def _acquire(self) -> ExclusiveConnection:
        idle_before = time.monotonic() - self.idle_timeout
        while self.idle:
            conn = self.idle.pop()
            if conn.last_used >= idle_before:
                return conn
            self.stats.upstream_cx_idle_timeout.inc()
            self._discard(conn)
        self.limits.start_pending(self.stats)  # waiting for a connection: max_pending_requests
        try:
            sock = _open_socket(self.endpoint, self.connect_timeout, self.stats, self.limits, self.tls)
        finally:
            self.limits.pending -= 1
        return ExclusiveConnection(sock, self.codec_factory())

    def _discard(self, conn: ExclusiveConnection) -> None:
        self.limits.connections -= 1
        self.stats.upstream_cx_active.dec()
        try:
            conn.sock.close()
        except OSError:
            pass

    def request(self, metadata: Metadata, mutation: dict, timeout: float | None, oneway: bool,
                leases: dict | None = None, order: tuple[SendOrder, int] | None = None) -> Metadata | None:
        """Send one request and read its response, on a connection of its own or the client's lease.

        With ``leases`` (the downstream connection's), the connection stays
        with that downstream connection, and the requests of a client's
        pipeline share it in order (``order``: the batch's SendOrder and this
        request's place in it).
        """
        if leases is None:
            return self._one_shot(metadata, mutation, timeout, oneway)
        out = bytearray()
        conn = None
        with gevent.Timeout(timeout, False):
            if order is not None:
                order[0].wait(order[1])
            try:
                conn = leases.get(self)  # after our turn: an earlier request may have just leased it
                session = []
                if conn is None or conn.broken:
                    conn = leases[self] = self._acquire()
                    for frame in leases.get(SESSION_KEY, ()):  # bring it to the client's session state
                        conn.batch.out += frame
                        session.append(conn.take_ticket())
                _encode(conn.codec, metadata, mutation, out, self.stats)
                conn.batch.out += out
                ticket = None if oneway else conn.take_ticket()
            finally:
                if order is not None:
                    order[0].done(order[1])
            try:
                if not conn.batch.batching:
                    conn.batch.flush(conn)
                for t in session:  # replies to the replayed session commands: read and dropped
                    self._read_turn(conn, t)
                return None if ticket is None else self._read_turn(conn, ticket)
            except (CodecError, OSError) as exc:
                self._drop(conn, leases)
                raise _failure(exc, self.stats) from None
        # the Timeout expired (False: no exception raised inside the block)
        if conn is not None:
            self._drop(conn, leases)
        raise timed_out(timeout)

    def _read_turn(self, conn: ExclusiveConnection, ticket: int) -> Metadata:
        conn.turns.wait(ticket)
        md = self._read_one(conn)
        conn.turns.done(ticket)
        return md

    def _one_shot(self, metadata: Metadata, mutation: dict, timeout: float | None, oneway: bool) -> Metadata | None:
        conn = self._acquire()
        out = bytearray()
        _encode(conn.codec, metadata, mutation, out, self.stats)
        try:
            with gevent.Timeout(timeout, False):
                send_all(conn.sock, out)
                md = None if oneway else self._read_one(conn)
                self._release(conn)
                return md
        except (CodecError, OSError) as exc:
            self._discard(conn)
            raise _failure(exc, self.stats) from None
        # the Timeout expired (False: no exception raised inside the block)
        self._discard(conn)
        raise timed_out(timeout)

    def _drop(self, conn: ExclusiveConnection, leases: dict | None) -> None:
        if leases is not None and leases.get(self) is conn:
            del leases[self]
        if not conn.broken:
            conn.break_pipeline()
            self._discard(conn)

    def end_lease(self, conn: ExclusiveConnection) -> None:
        """The downstream connection holding ``conn`` closed: its session state goes with it."""
        if not conn.broken:
            conn.break_pipeline()
            self._discard(conn)

    def _read_one(self, conn: ExclusiveConnection) -> Metadata:
        buffer = conn.buffer
        while True:
            if buffer:
                md = Metadata()
                if conn.codec.decode(buffer, md) is DONE:
                    return md
            n = conn.sock.recv_into(SCRATCH)
            if not n:
                raise ConnectionResetError("upstream closed the connection")
            buffer += SCRATCH_VIEW[:n]

    def _release(self, conn: ExclusiveConnection) -> None:
        conn.last_used = time.monotonic()
        if conn.buffer or len(self.idle) >= self.max_idle:
            self._discard(conn)  # unexpected extra bytes, or enough idle: do not reuse
        else:
            self.idle.append(conn)

    def close(self) -> None:
        for conn in self.idle:
            self._discard(conn)
        self.idle = []
