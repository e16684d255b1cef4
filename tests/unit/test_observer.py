"""overriding(): the hot path calls only observers whose hooks do something."""

from __future__ import annotations

from metaproxy.observer import RequestObserver, overriding


class _EndOnly(RequestObserver):
    def upstream_end(self, ctx, token, error, response=None) -> None:
        pass


class _Nothing(RequestObserver):
    pass


def test_a_pair_of_hooks_keeps_observers_overriding_either() -> None:
    end_only, nothing = _EndOnly(), _Nothing()
    assert overriding([end_only, nothing], "upstream_start", "upstream_end") == [end_only]
    assert overriding([end_only, nothing], "upstream_start") == []
    assert overriding([end_only, nothing], "request_end") == []
