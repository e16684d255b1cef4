"""Echo servers and clients from Apache Thrift and thriftpy2, on 127.0.0.1 and free ports.

Servers are the libraries' own threaded servers (their per-connection
``handle`` loop, transports, protocols and processors); only the accept loop
is made stoppable, so a test can shut a server down without leaving a thread
spinning. Both libraries share one handler class and record what they saw.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import thriftpy2.protocol as tp_protocol
import thriftpy2.server as tp_server
import thriftpy2.thrift as tp_thrift
import thriftpy2.transport as tp_transport
from thrift.protocol import TBinaryProtocol, TCompactProtocol
from thrift.protocol.THeaderProtocol import THeaderProtocol, THeaderProtocolFactory
from thrift.protocol.TMultiplexedProtocol import TMultiplexedProtocol
from thrift.server import TServer
from thrift.TMultiplexedProcessor import TMultiplexedProcessor
from thrift.transport import TSocket, TTransport
from thrift.transport.THeaderTransport import THeaderClientType, THeaderSubprotocolID
from thriftpy2.protocol.multiplex import TMultiplexedProtocol as TpMultiplexedProtocol

from tests.e2e.thrift_support.idl import apache_modules, thriftpy2_module

HOST = "127.0.0.1"
LIBS = ("apache", "thriftpy2")


class EchoHandler:
    """The Echo service for both libraries (their Item / NotFound classes are passed in)."""

    def __init__(self, name: str, not_found: type) -> None:
        self.name = name
        self.not_found = not_found
        self.calls: list[str] = []
        self.notes: list[str] = []

    def ping(self) -> None:
        self.calls.append("ping")

    def echo(self, item: Any) -> Any:
        self.calls.append("echo")
        return item

    def find(self, name: str) -> Any:
        self.calls.append("find")
        raise self.not_found(what=name)

    def fire(self, note: str) -> None:
        self.calls.append("fire")
        self.notes.append(note)

    def whoami(self) -> str:
        self.calls.append("whoami")
        return self.name


class OtherHandler:
    def __init__(self, name: str) -> None:
        self.name = name

    def whoami(self) -> str:
        return f"{self.name}/Other"


class _RecordHeaders:
    """Wraps an Apache processor to keep the THeader headers of every request it served."""

    def __init__(self, inner: Any, sink: list[dict[str, str]]) -> None:
        self.inner = inner
        self.sink = sink

    def process(self, iprot: Any, oprot: Any) -> Any:
        result = self.inner.process(iprot, oprot)
        self.sink.append({k.decode(): v.decode() for k, v in iprot.get_headers().items()})
        return result


def _accept_loop(accept: Callable[[], Any], handle: Callable[[Any], None], closed: Callable[[], bool]) -> None:
    while not closed():
        try:
            client = accept()
        except Exception:
            if closed():
                return
            continue
        if client is not None:
            threading.Thread(target=handle, args=(client,), daemon=True).start()


class _StoppableApacheServer(TServer.TThreadedServer):
    """Apache's TThreadedServer whose accept loop ends when the listening socket is shut down."""

    closed = False

    def serve(self) -> None:  # the socket is already listening (to learn its port)
        _accept_loop(self.serverTransport.accept, self.handle, lambda: self.closed)


class _StoppableThriftpy2Server(tp_server.TThreadedServer):
    def serve(self) -> None:
        _accept_loop(self.trans.accept, self.handle, lambda: self.closed)


class EchoServer:
    """One server: ``lib`` apache|thriftpy2, ``transport`` framed|buffered|header, ``protocol`` binary|compact."""

    def __init__(self, name: str, lib: str, transport: str = "framed", protocol: str = "binary",
                 multiplexed: bool = False, any_dialect: bool = False) -> None:
        self.name, self.lib, self.transport, self.protocol = name, lib, transport, protocol
        self.multiplexed = multiplexed
        #: THeader servers only: also accept framed/unframed binary/compact clients (Apache's detection).
        self.any_dialect = any_dialect
        self.headers_seen: list[dict[str, str]] = []
        self.other = OtherHandler(name)
        if lib == "apache":
            self._listen_sock, self._server = self._apache()
        else:
            self._listen_sock, self._server = self._thriftpy2()
        self.port = self._listen_sock.getsockname()[1]
        self._thread = threading.Thread(target=self._server.serve, name=f"thrift-{name}", daemon=True)

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def _apache(self) -> tuple[socket.socket, Any]:
        mods = apache_modules()
        self.handler = EchoHandler(self.name, mods.ttypes.NotFound)
        processor: Any = mods.Echo.Processor(self.handler)
        if self.multiplexed:
            mux = TMultiplexedProcessor()
            mux.registerProcessor("Echo", processor)
            mux.registerProcessor("Other", mods.Other.Processor(self.other))
            processor = mux
        if self.transport == "header":
            sub = THeaderSubprotocolID.COMPACT if self.protocol == "compact" else THeaderSubprotocolID.BINARY
            processor = _RecordHeaders(processor, self.headers_seen)
            tfactory: Any = TTransport.TTransportFactoryBase()
            allowed = ([THeaderClientType.HEADERS, THeaderClientType.FRAMED_BINARY, THeaderClientType.UNFRAMED_BINARY,
                        THeaderClientType.FRAMED_COMPACT, THeaderClientType.UNFRAMED_COMPACT]
                       if self.any_dialect else [THeaderClientType.HEADERS])
            pfactory: Any = THeaderProtocolFactory(allowed, default_protocol=sub)
        else:
            tfactory = (TTransport.TFramedTransportFactory() if self.transport == "framed"
                        else TTransport.TBufferedTransportFactory())
            pfactory = (TCompactProtocol.TCompactProtocolFactory() if self.protocol == "compact"
                        else TBinaryProtocol.TBinaryProtocolFactory())
        listen = TSocket.TServerSocket(host=HOST, port=0)
        listen.listen()
        return listen.handle, _StoppableApacheServer(processor, listen, tfactory, pfactory, daemon=True)

    def _thriftpy2(self) -> tuple[socket.socket, Any]:
        if self.transport == "header":
            raise ValueError("thriftpy2 has no THeader transport")
        module = thriftpy2_module()
        self.handler = EchoHandler(self.name, module.NotFound)
        processor: Any = tp_thrift.TProcessor(module.Echo, self.handler)
        if self.multiplexed:
            mux = tp_thrift.TMultiplexedProcessor()
            mux.register_processor("Echo", processor)
            mux.register_processor("Other", tp_thrift.TProcessor(module.Other, self.other))
            processor = mux
        tfactory = (tp_transport.TFramedTransportFactory() if self.transport == "framed"
                    else tp_transport.TBufferedTransportFactory())
        pfactory = (tp_protocol.TCompactProtocolFactory() if self.protocol == "compact"
                    else tp_protocol.TBinaryProtocolFactory())
        listen = tp_transport.TServerSocket(host=HOST, port=0)
        listen.listen()
        server = _StoppableThriftpy2Server(processor, listen, itrans_factory=tfactory, iprot_factory=pfactory,
                                           daemon=True)
        return listen.sock, server

    def start(self) -> EchoServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.closed = True
        try:
            self._listen_sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        self._listen_sock.close()
        self._thread.join(5)

    def wait_for_note(self, note: str, timeout: float = 5.0) -> bool:
        """Poll until a oneway ``fire(note)`` reached the handler (oneway calls have no reply)."""
        deadline = time.monotonic() + timeout
        while note not in self.handler.notes:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True


class EchoClient:
    """A connected client of either library; ``echo`` and (multiplexed) ``other`` are the stubs."""

    def __init__(self, lib: str, port: int, transport: str = "framed", protocol: str = "binary",
                 multiplexed: bool = False, host: str = HOST) -> None:
        self.lib = lib
        if lib == "apache":
            self._open_apache(host, port, transport, protocol, multiplexed)
        else:
            self._open_thriftpy2(host, port, transport, protocol, multiplexed)

    def _open_apache(self, host: str, port: int, transport: str, protocol: str, multiplexed: bool) -> None:
        mods = apache_modules()
        sock = TSocket.TSocket(host, port)
        sock.setTimeout(5000)
        if transport == "header":
            sub = THeaderSubprotocolID.COMPACT if protocol == "compact" else THeaderSubprotocolID.BINARY
            proto: Any = THeaderProtocol(sock, [THeaderClientType.HEADERS], sub)
            self._trans = proto.trans
        else:
            self._trans = (TTransport.TFramedTransport(sock) if transport == "framed"
                           else TTransport.TBufferedTransport(sock))
            proto = (TCompactProtocol.TCompactProtocol(self._trans) if protocol == "compact"
                     else TBinaryProtocol.TBinaryProtocol(self._trans))
        self.protocol = proto
        if multiplexed:
            self.echo = mods.Echo.Client(TMultiplexedProtocol(proto, "Echo"))
            self.other = mods.Other.Client(TMultiplexedProtocol(proto, "Other"))
        else:
            self.echo = mods.Echo.Client(proto)
        self.Item, self.NotFound = mods.ttypes.Item, mods.ttypes.NotFound
        from thrift.Thrift import TApplicationException
        self.TApplicationException = TApplicationException
        self._trans.open()

    def _open_thriftpy2(self, host: str, port: int, transport: str, protocol: str, multiplexed: bool) -> None:
        if transport == "header":
            raise ValueError("thriftpy2 has no THeader transport")
        module = thriftpy2_module()
        sock = tp_transport.TSocket(host, port, socket_timeout=5000, connect_timeout=5000)
        tfactory = (tp_transport.TFramedTransportFactory() if transport == "framed"
                    else tp_transport.TBufferedTransportFactory())
        pfactory = (tp_protocol.TCompactProtocolFactory() if protocol == "compact"
                    else tp_protocol.TBinaryProtocolFactory())
        self._trans = tfactory.get_transport(sock)
        proto = pfactory.get_protocol(self._trans)
        self.protocol = proto
        if multiplexed:
            self.echo = tp_thrift.TClient(module.Echo, TpMultiplexedProtocol(proto, "Echo"))
            self.other = tp_thrift.TClient(module.Other, TpMultiplexedProtocol(proto, "Other"))
        else:
            self.echo = tp_thrift.TClient(module.Echo, proto)
        self.Item, self.NotFound = module.Item, module.NotFound
        self.TApplicationException = tp_thrift.TApplicationException
        self._trans.open()

    def close(self) -> None:
        self._trans.close()

    def __enter__(self) -> EchoClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
