"""Consistent hashing (ring_hash, maglev): the same key keeps its endpoint; a new endpoint takes ~1/N of keys."""

from __future__ import annotations

from collections import Counter

import pytest

from metaproxy.upstream.endpoint import Endpoint
from metaproxy.upstream.lb import make_balancer

KEYS = [f"user-{i}" for i in range(10000)]


def _endpoints(n: int) -> list[Endpoint]:
    return [Endpoint("10.0.0.1", 9000 + i) for i in range(n)]


def _assign(policy: str, endpoints: list[Endpoint], usable: list[Endpoint] | None = None) -> dict[str, str]:
    lb = make_balancer(policy)
    lb.rebuild(endpoints)
    usable = endpoints if usable is None else usable
    return {k: lb.choose(usable, k).address for k in KEYS}


@pytest.mark.parametrize("policy", ["ring_hash", "maglev"])
def test_same_key_same_endpoint_across_calls_and_rebuilds(policy):
    eps = _endpoints(5)
    first = _assign(policy, eps)
    again = _assign(policy, _endpoints(5))  # a fresh balancer over equal endpoints (another worker)
    assert first == again
    lb = make_balancer(policy)
    lb.rebuild(eps)
    assert {lb.choose(eps, "user-42").address for _ in range(50)} == {first["user-42"]}


@pytest.mark.parametrize("policy, spread", [("ring_hash", 0.35), ("maglev", 0.05)])
def test_keys_spread_evenly(policy, spread):
    counts = Counter(_assign(policy, _endpoints(4)).values())
    assert len(counts) == 4
    for n in counts.values():
        assert abs(n / len(KEYS) - 0.25) < 0.25 * spread


@pytest.mark.parametrize("policy, extra_moves", [("ring_hash", 0.0), ("maglev", 0.05)])
def test_adding_an_endpoint_remaps_about_one_in_n(policy, extra_moves):
    before = _assign(policy, _endpoints(4))
    grown = _endpoints(5)
    after = _assign(policy, grown)
    moved = [k for k in KEYS if before[k] != after[k]]
    share = len(moved) / len(KEYS)
    assert 0.13 < share < 0.27, share  # ideal 1/5
    to_new = sum(1 for k in moved if after[k] == grown[4].address)
    assert to_new / len(moved) >= 1.0 - extra_moves  # keys move to the newcomer, not between old endpoints


@pytest.mark.parametrize("policy", ["ring_hash", "maglev"])
def test_endpoint_leaving_rotation_moves_only_its_keys(policy):
    eps = _endpoints(4)
    before = _assign(policy, eps)
    after = _assign(policy, eps, usable=eps[1:])  # eps[0] unhealthy or ejected
    for k in KEYS:
        if before[k] != eps[0].address:
            assert after[k] == before[k]
        else:
            assert after[k] != eps[0].address


@pytest.mark.parametrize("policy", ["ring_hash", "maglev"])
def test_weights_shift_share(policy):
    eps = _endpoints(2)
    eps[1].weight = 3
    counts = Counter(_assign(policy, eps).values())
    assert 0.65 < counts[eps[1].address] / len(KEYS) < 0.85
