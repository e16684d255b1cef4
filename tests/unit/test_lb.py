"""The unhashed balancers: weights, avoiding endpoints already tried, least requests."""

from __future__ import annotations

from collections import Counter

from metaproxy.upstream.endpoint import Endpoint
from metaproxy.upstream.lb import LeastRequest, RandomLB, RoundRobin


def endpoints(*weights: int) -> list[Endpoint]:
    return [Endpoint("127.0.0.1", 9000 + i, w) for i, w in enumerate(weights)]


def test_round_robin_follows_weights_exactly():
    eps = endpoints(1, 3)
    rr = RoundRobin()
    picks = Counter(rr.choose(eps, None).port for _ in range(400))
    assert picks == {9000: 100, 9001: 300}


def test_every_balancer_avoids_the_endpoints_a_request_tried_unless_none_is_left():
    eps = endpoints(1, 1, 1)
    for balancer in (RoundRobin(), RandomLB(), LeastRequest()):
        assert all(balancer.choose(eps, None, exclude=eps[:2]) is eps[2] for _ in range(20))
        assert balancer.choose(eps, None, exclude=eps) in eps
        assert balancer.choose([], None) is None


def test_least_request_prefers_the_less_busy_endpoint():
    eps = endpoints(1, 1)
    eps[0].active_requests = 10
    assert all(LeastRequest().choose(eps, None) is eps[1] for _ in range(20))
