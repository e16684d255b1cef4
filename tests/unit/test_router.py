"""Route tables: matchers, first match wins, weighted picks."""

from __future__ import annotations

import pytest

from metaproxy.message import Metadata
from metaproxy.router import parse_route_config
from metaproxy.settings import ConfigError


def table(routes):
    return parse_route_config({"name": "t", "routes": routes})


def test_all_matchers_must_hold_and_first_route_wins():
    t = table([
        {"name": "canary", "match": {"metadata": [
            {"name": "method", "exact": "sayHello"},
            {"name": "x-user", "prefix": "test-"},
            {"name": "version", "regex": "v[0-9]+"}]}, "route": {"cluster": "a"}},
        {"name": "hello", "match": {"metadata": [{"name": "method", "exact": "sayHello"}]}, "route": {"cluster": "b"}},
        {"name": "rest", "route": {"cluster": "c"}},
    ])
    assert t.match(Metadata(method="sayHello", **{"x-user": "test-1", "version": "v2"})).name == "canary"
    assert t.match(Metadata(method="sayHello", **{"x-user": "test-1", "version": "v2x"})).name == "hello"
    assert t.match(Metadata(method="other")).name == "rest"


def test_present_invert_and_suffix():
    t = table([
        {"name": "no-tag", "match": {"metadata": [{"name": "tag", "present": True, "invert": True}]},
         "route": {"cluster": "a"}},
        {"name": "gz", "match": {"metadata": [{"name": "tag", "suffix": ".gz"}]}, "route": {"cluster": "b"}},
    ])
    assert t.match(Metadata()).name == "no-tag"
    assert t.match(Metadata(tag="x.gz")).name == "gz"
    assert t.match(Metadata(tag="x")) is None


def test_typed_values_match_as_strings():
    t = table([{"name": "id", "match": {"metadata": [{"name": "request_id", "exact": "7"}]},
                "route": {"cluster": "a"}}])
    assert t.match(Metadata(request_id=7)).name == "id"


def test_weighted_pick_follows_weights():
    split = [{"name": "a", "weight": 1}, {"name": "b", "weight": 3}]
    route = table([{"route": {"weighted_clusters": split}}]).routes[0]
    assert route.pick_cluster(lambda: 0.0) == "a"
    assert route.pick_cluster(lambda: 0.2) == "a"
    assert route.pick_cluster(lambda: 0.3) == "b"
    assert route.pick_cluster(lambda: 0.999) == "b"


def test_bad_route_config_lists_every_problem():
    with pytest.raises(ConfigError) as info:
        table([{"name": "x", "match": {"metadata": [{"name": "m", "exact": "a", "prefix": "b"}]}, "route": {}},
               {"name": "y", "route": {"cluster": "a", "weighted_clusters": [{"name": "b"}]}}])
    text = str(info.value)
    assert "routes[0].match.metadata[0]: exactly one of" in text
    assert "routes[0].route: one of cluster or weighted_clusters is required" in text
    assert "routes[1].route: give either cluster or weighted_clusters, not both" in text
