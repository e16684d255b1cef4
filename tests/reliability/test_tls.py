"""TLS and mTLS: termination on the listener, origination to the cluster, client certificates, SNI, and
routing on the peer identity (SPIFFE URI SAN, else subject CN) the proxy exposes as ``peer_identity``.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

import pytest

from metaproxy.codec import Direction
from metaproxy.message import MessageType, Metadata
from metaproxy_codecs.tinyrpc.codec import TinyRpcCodec
from metaproxy_codecs.tinyrpc.sample import TinyRpcClient, TinyRpcServer, encode_message
from tests.reliability.certs import CertificateAuthority, Pair
from tests.reliability.util import served

pytestmark = pytest.mark.slow
ALICE = "spiffe://cluster.local/ns/default/sa/alice"


class TlsClient(TinyRpcClient):
    """The sample tinyrpc client over TLS (optionally presenting a client certificate)."""

    def __init__(self, address: tuple[str, int], ca_file: str, client: Pair | None = None,
                 server_hostname: str = "proxy.test") -> None:
        context = ssl.create_default_context(cafile=ca_file)
        if client is not None:
            context.load_cert_chain(client.cert_file, client.key_file)
        raw = socket.create_connection(address, timeout=10)
        self.sock = context.wrap_socket(raw, server_hostname=server_hostname)
        self.codec = TinyRpcCodec(direction=Direction.RESPONSE)
        self.buffer = bytearray()


class TlsTinyRpcServer(TinyRpcServer):
    """The sample tinyrpc upstream behind TLS; remembers the SNI names and client certificates it saw."""

    def __init__(self, pair: Pair, ca_file: str | None = None, name: str = "tls-up") -> None:
        super().__init__(0, name)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(pair.cert_file, pair.key_file)
        if ca_file:
            self.context.load_verify_locations(ca_file)
            self.context.verify_mode = ssl.CERT_REQUIRED
        self.server_names: list[str | None] = []
        self.peer_certs: list[dict[str, Any]] = []
        self.context.sni_callback = lambda _sock, name, _ctx: self.server_names.append(name)

    def get_request(self):  # noqa: ANN201 - socketserver's hook
        sock, address = self.socket.accept()
        tls = self.context.wrap_socket(sock, server_side=True)  # a failed handshake is an OSError: dropped
        self.peer_certs.append(tls.getpeercert() or {})
        return tls, address


@pytest.fixture
def pki(tmp_path) -> dict[str, Any]:
    ca = CertificateAuthority(tmp_path / "pki")
    other = CertificateAuthority(tmp_path / "other", "untrusted CA")
    return {
        "ca": ca.ca_file,
        "proxy": ca.issue("proxy", "proxy.test", dns=["proxy.test"], ips=["127.0.0.1"]),
        "upstream": ca.issue("upstream", "upstream.test", dns=["upstream.test"]),
        "alice": ca.issue("alice", "alice", uris=[ALICE], server=False),
        "bob": ca.issue("bob", "bob", server=False),  # no SAN: the identity is the subject CN
        "mallory": other.issue("mallory", "mallory", uris=["spiffe://evil/sa/mallory"], server=False),
        "proxy_client": ca.issue("proxy-client", "metaproxy", uris=["spiffe://cluster.local/sa/metaproxy"],
                                 server=False),
    }


def tls_listener(pki: dict[str, Any], routes: list[dict[str, Any]], require_client: bool = False,
                 name: str = "in") -> dict[str, Any]:
    tls = {"cert_file": pki["proxy"].cert_file, "key_file": pki["proxy"].key_file}
    if require_client:
        tls.update(ca_file=pki["ca"], require_client_certificate=True)
    return {"name": name, "address": "127.0.0.1:0", "protocol": {"codec": "tinyrpc"}, "tls": tls,
            "route_config": {"name": "r", "routes": routes}}


def plain_listener(cluster: str) -> dict[str, Any]:
    return {"name": "plain", "address": "127.0.0.1:0", "protocol": {"codec": "tinyrpc"},
            "route_config": {"name": "p", "routes": [{"name": "all", "match": {}, "route": {"cluster": cluster}}]}}


def everything_to(cluster: str) -> list[dict[str, Any]]:
    return [{"name": "all", "match": {}, "route": {"cluster": cluster}}]


def test_listener_terminates_tls(proxy, tinyrpc_server, pki) -> None:
    up = tinyrpc_server("plain-up")
    p = proxy({"listeners": [tls_listener(pki, everything_to("c1"))],
               "clusters": [{"name": "c1", "endpoints": [up.address]}]})
    with TlsClient(p.address(), pki["ca"]) as client:
        md, body = client.call("hello")
        assert md["message_type"] is MessageType.RESPONSE and body == b"plain-up:hello:"
        assert client.sock.version() in ("TLSv1.2", "TLSv1.3")
    with socket.create_connection(p.address(), timeout=5) as raw:  # plaintext tinyrpc to a TLS port
        raw.sendall(encode_message(Metadata(request_id=1, message_type=MessageType.REQUEST, service="demo",
                                            method="plaintext")))
        try:
            reply = raw.recv(100)
        except ConnectionResetError:
            reply = b""
        assert not reply.startswith(b"\x00"), "a TLS listener answered plaintext tinyrpc"  # an alert or nothing
    assert [md["method"] for md in up.received.requests] == ["hello"]


def test_client_certificate_required(proxy, tinyrpc_server, pki) -> None:
    up = tinyrpc_server("up")
    p = proxy({"listeners": [tls_listener(pki, everything_to("c1"), require_client=True)],
               "clusters": [{"name": "c1", "endpoints": [up.address]}]})
    for who in (None, "mallory"):  # no certificate; a certificate from a CA the listener does not trust
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            with TlsClient(p.address(), pki["ca"], pki[who] if who else None) as client:
                client.call("sneak")
    assert all(md["method"] != "sneak" for md in up.received.requests)
    with TlsClient(p.address(), pki["ca"], pki["alice"]) as client:
        assert client.call("hello")[0]["message_type"] is MessageType.RESPONSE


def test_routing_on_peer_identity(proxy, tinyrpc_server, pki) -> None:
    for_alice, for_cn_bob, others = tinyrpc_server("alice-backend"), tinyrpc_server("bob-backend"), \
        tinyrpc_server("default")
    routes = [
        {"name": "alice", "match": {"metadata": [{"name": "peer_identity", "exact": ALICE}]},
         "route": {"cluster": "alice"}},
        {"name": "bob", "match": {"metadata": [{"name": "peer_identity", "exact": "bob"}]},
         "route": {"cluster": "bob"}},
        {"name": "rest", "match": {}, "route": {"cluster": "rest"}},
    ]
    p = proxy({"listeners": [tls_listener(pki, routes, require_client=True)],
               "clusters": [{"name": "alice", "endpoints": [for_alice.address]},
                            {"name": "bob", "endpoints": [for_cn_bob.address]},
                            {"name": "rest", "endpoints": [others.address]}]})
    for who, backend in (("alice", "alice-backend"), ("bob", "bob-backend")):
        with TlsClient(p.address(), pki["ca"], pki[who]) as client:
            md, body = client.call("whoami", headers={"peer_identity": "spoofed"})
            assert body == f"{backend}:whoami:".encode(), (who, body)
    assert not others.received.requests  # a header named peer_identity cannot override the certificate


def test_cluster_originates_tls_with_sni_and_client_certificate(proxy, pki) -> None:
    up = TlsTinyRpcServer(pki["upstream"], ca_file=pki["ca"]).start()  # mTLS upstream
    try:
        p = proxy({"listeners": [plain_listener("secure")],
                   "clusters": [{"name": "secure", "endpoints": [up.address],
                                 "tls": {"ca_file": pki["ca"], "sni": "upstream.test",
                                         "cert_file": pki["proxy_client"].cert_file,
                                         "key_file": pki["proxy_client"].key_file}}]})
        served(p, "hello")
        assert "upstream.test" in up.server_names
        sans = [dict(c).get("subjectAltName", ()) for c in up.peer_certs]
        assert any(("URI", "spiffe://cluster.local/sa/metaproxy") in s for s in sans), up.peer_certs
    finally:
        up.stop()


def test_cluster_refuses_an_upstream_with_the_wrong_name(proxy, tinyrpc_server, pki) -> None:
    up = TlsTinyRpcServer(pki["upstream"]).start()
    try:
        p = proxy({"listeners": [plain_listener("secure")],
                   "clusters": [{"name": "secure", "endpoints": [up.address],
                                 "tls": {"ca_file": pki["ca"], "sni": "payments.test"}}]})
        with TinyRpcClient(*p.address()) as client:
            md, _ = client.call("hello")
        assert md["message_type"] is MessageType.ERROR  # certificate says upstream.test: not who we asked for
        assert not up.received.requests
    finally:
        up.stop()
