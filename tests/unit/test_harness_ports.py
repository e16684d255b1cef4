"""The test harness gives every port-0 address of one proxy config its own port."""

from __future__ import annotations

from metaproxy.testing import harness


def test_a_port_free_port_returns_twice_is_not_given_twice(monkeypatch, tmp_path) -> None:
    picks = iter([41001, 41001, 41001, 41002])  # free_port() may repeat: nothing holds a port in between
    monkeypatch.setattr(harness, "free_port", lambda: next(picks))
    proxy = harness.ProxyProcess({
        "admin": {"address": "127.0.0.1:0"},
        "listeners": [{"name": "in", "address": "127.0.0.1:0"}, {"name": "fixed", "address": "127.0.0.1:9999"}],
    }, tmp_path)
    assert proxy.address("in") == ("127.0.0.1", 41001)
    assert proxy.address("fixed") == ("127.0.0.1", 9999)
    assert proxy.admin_address == ("127.0.0.1", 41002)
