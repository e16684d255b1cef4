"""MetaRouter documents -> validated model -> Envoy RouteConfiguration -> our RouteTable."""

from __future__ import annotations

import pytest
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.type.matcher.v3.regex_pb2 import RegexMatcher
from envoy.type.matcher.v3.string_pb2 import StringMatcher

from metaproxy.controlplane.loader import check_route_config
from metaproxy.controlplane.model import read_documents
from metaproxy.controlplane.translate import TranslationError, translate
from metaproxy.message import Metadata
from metaproxy.router import parse_route_config
from metaproxy.xds.convert import UnsupportedRoute, header_to_matcher, route_config_to_dict
from tests.xds.helpers import meta_router

FULL = {
    "apiVersion": "metaprotocol.aeraki.io/v1alpha1", "kind": "MetaRouter",
    "metadata": {"name": "thrift-sample", "namespace": "meta-thrift"},
    "spec": {
        "hosts": ["svc.ns.svc.cluster.local"],
        "routes": [
            {"name": "canary",
             "match": {"attributes": {"method": {"exact": "sayHello"}, "x-user": {"prefix": "test-"},
                                      "version": {"regex": "v[0-9]+"}, "x-debug": {}}},
             "route": [{"destination": {"host": "svc.ns.svc.cluster.local", "subset": "v2",
                                        "port": {"number": 9090}}}],
             "requestMutation": [{"key": "x-route", "value": "canary"}],
             "responseMutation": [{"key": "x-served-by", "value": "metaproxy"}],
             "hashPolicy": ["x-user"]},
            {"name": "split",
             "route": [{"destination": {"host": "svc.ns.svc.cluster.local", "subset": "v1",
                                        "port": {"number": 9090}}, "weight": 20},
                       {"destination": {"host": "svc.ns.svc.cluster.local", "subset": "v2",
                                        "port": {"number": 9090}}, "weight": 80}],
             "mirror": {"host": "svc.ns.svc.cluster.local", "subset": "shadow", "port": {"number": 9090}},
             "mirrorPercentage": {"value": 12.5},
             "timeout": "2s",
             "retryPolicy": {"retryOn": "connect-failure,reset", "numRetries": 2, "perTryTimeout": "500ms"}},
        ],
        "localRateLimit": {"tokenBucket": {"maxTokens": 10, "tokensPerFill": 10, "fillInterval": "1s"}},
    },
}


def _one(doc):
    docs = read_documents([doc], "test.yaml")
    assert not docs.problems, docs.problems
    return docs.routers[0]


def test_translation_follows_aeraki_names_and_fields():
    config = translate(_one(FULL))
    assert config.name == "svc.ns.svc.cluster.local_9090"
    assert len(config.virtual_hosts) == 1
    canary, split = config.virtual_hosts[0].routes
    headers = {h.name: h for h in canary.match.headers}
    assert headers["method"].string_match.exact == "sayHello"
    assert headers["x-user"].string_match.prefix == "test-"
    assert headers["version"].string_match.safe_regex.regex == "v[0-9]+"
    assert headers["x-debug"].present_match is True
    assert canary.route.cluster == "outbound|9090|v2|svc.ns.svc.cluster.local"
    assert canary.route.hash_policy[0].header.header_name == "x-user"
    assert [(o.header.key, o.header.value) for o in canary.request_headers_to_add] == [("x-route", "canary")]
    assert [(o.header.key, o.header.value) for o in canary.response_headers_to_add] == [("x-served-by", "metaproxy")]
    weighted = [(c.name, c.weight.value) for c in split.route.weighted_clusters.clusters]
    assert weighted == [("outbound|9090|v1|svc.ns.svc.cluster.local", 20),
                        ("outbound|9090|v2|svc.ns.svc.cluster.local", 80)]
    mirror = split.route.request_mirror_policies[0]
    assert mirror.cluster == "outbound|9090|shadow|svc.ns.svc.cluster.local"
    assert split.route.timeout.ToMilliseconds() == 2000
    assert split.route.retry_policy.retry_on == "connect_failure,reset"
    assert split.route.retry_policy.num_retries.value == 2
    assert split.route.retry_policy.per_try_timeout.ToMilliseconds() == 500


def test_translation_round_trips_into_a_working_route_table():
    config = translate(_one(FULL))
    table = parse_route_config(route_config_to_dict(config), version="v1")
    canary, split = table.routes
    md = Metadata(method="sayHello", **{"x-user": "test-7", "version": "v3", "x-debug": "1"})
    assert table.match(md) is canary
    assert table.match(Metadata(method="sayHello")) is split
    assert canary.request_mutation == (("x-route", "canary"),)
    assert canary.response_mutation == (("x-served-by", "metaproxy"),)
    assert canary.hash_policy == ("x-user",)
    assert split.mirrors[0].percentage == pytest.approx(12.5)
    assert split.timeout == pytest.approx(2.0)
    assert split.retry_policy.retry_on == ("connect_failure", "reset")
    assert split.retry_policy.num_retries == 2
    assert split.retry_policy.per_try_timeout == pytest.approx(0.5)
    picks = {split.pick_cluster(lambda x=x: x) for x in (0.1, 0.5, 0.9)}
    assert picks == {"outbound|9090|v1|svc.ns.svc.cluster.local", "outbound|9090|v2|svc.ns.svc.cluster.local"}


def test_snake_case_spelling_of_the_proto_is_accepted():
    doc = meta_router()
    route = doc["spec"]["routes"][0]
    route["mirror"] = {"host": "demo", "subset": "shadow"}
    route["mirror_percentage"] = {"value": 50}
    route["request_mutation"] = [{"key": "a", "value": "b"}]
    config = translate(_one(doc))
    assert config.name == "demo_9191"
    assert config.virtual_hosts[0].routes[0].request_headers_to_add[0].header.key == "a"
    assert config.virtual_hosts[0].routes[0].route.request_mirror_policies[0].cluster == "outbound|9191|shadow|demo"


def test_port_comes_from_destinations_when_spec_port_is_absent():
    doc = meta_router()
    del doc["spec"]["port"]
    with pytest.raises(TranslationError, match="set spec.port"):
        translate(_one(doc))
    for dest in doc["spec"]["routes"][0]["route"]:
        dest["destination"]["port"] = {"number": 7000}
    assert translate(_one(doc)).name == "demo_7000"


@pytest.mark.parametrize("mutate, expected", [
    (lambda s: s["routes"][0]["match"].update(attributes={"method": {"exact": "a", "prefix": "b"}}),
     "spec.routes[0].match.attributes.method: give exactly one of exact, prefix, regex"),
    (lambda s: s["routes"][0]["match"].update(attributes={"method": {"regex": "(unclosed"}}),
     "spec.routes[0].match.attributes.method.regex: invalid regex"),
    (lambda s: s["routes"][0].update(route=[{"destination": {"host": "demo"}, "weight": 30},
                                            {"destination": {"host": "demo", "subset": "v2"}, "weight": 30}]),
     "spec.routes[0].route: weights must add up to 100"),
    (lambda s: s["routes"].append(dict(s["routes"][0])),
     "spec.routes[2].name: duplicate route name 'canary'"),
    (lambda s: s["routes"][0].update(metdata=1), "spec.routes[0]: unknown key 'metdata'"),
    (lambda s: s["routes"][0]["route"][0]["destination"].update(port={"number": 70000}),
     "spec.routes[0].route[0].destination.port.number: expected a port number"),
    (lambda s: s["routes"][0].update(retryPolicy={"retryOn": ["sometimes"]}),
     "spec.routes[0].retryPolicy.retryOn: 'sometimes' is not one of"),
    (lambda s: s.update(localRateLimit={"tokenBucket": {"maxTokens": 0, "fillInterval": "1s"}}),
     "spec.localRateLimit.tokenBucket.maxTokens: must be a number greater than 0"),
    (lambda s: s.pop("hosts"), "spec.hosts: required key is missing"),
])
def test_problems_name_the_file_document_and_key_path(mutate, expected):
    doc = meta_router(extra_routes=[{"name": "canary", "match": {"attributes": {"method": {"exact": "x"}}},
                                     "route": [{"destination": {"host": "demo", "subset": "v1"}}]}])
    mutate(doc["spec"])
    docs = read_documents([doc], "routes/demo.yaml")
    assert not docs.routers
    assert any(p.startswith("routes/demo.yaml#0 (MetaRouter demo): ") and expected in p for p in docs.problems), \
        docs.problems


def test_application_protocol_and_unknown_kind():
    docs = read_documents([
        {"apiVersion": "metaprotocol.aeraki.io/v1alpha1", "kind": "ApplicationProtocol",
         "metadata": {"name": "thrift"}, "spec": {"protocol": "thrift", "codec": "aeraki.meta_protocol.codec.thrift"}},
        {"apiVersion": "metaprotocol.aeraki.io/v1alpha1", "kind": "VirtualService", "metadata": {"name": "x"},
         "spec": {}},
    ], "p.yaml")
    assert [p.protocol for p in docs.protocols] == ["thrift"]
    assert any("p.yaml#1 (VirtualService x): kind: 'VirtualService' is not one of" in p for p in docs.problems)


def test_local_rate_limit_is_kept_in_the_model():
    router = _one(FULL)
    assert router.local_rate_limit.token_bucket.max_tokens == 10
    assert router.local_rate_limit.token_bucket.fill_interval == 1.0


def _config(*headers: rc.HeaderMatcher, action: rc.RouteAction | None = None) -> RouteConfiguration:
    route = rc.Route(name="r", match=rc.RouteMatch(headers=list(headers)),
                     route=action or rc.RouteAction(cluster="c"))
    return RouteConfiguration(name="n", virtual_hosts=[rc.VirtualHost(name="v", routes=[route])])


def test_old_and_new_header_matcher_forms_are_understood():
    old = [rc.HeaderMatcher(name="a", exact_match="x"), rc.HeaderMatcher(name="b", prefix_match="p"),
           rc.HeaderMatcher(name="c", safe_regex_match=RegexMatcher(regex="r+")),
           rc.HeaderMatcher(name="d", present_match=True, invert_match=True),
           rc.HeaderMatcher(name="e", string_match=StringMatcher(exact="Yes", ignore_case=True)),
           rc.HeaderMatcher(name="f", string_match=StringMatcher(contains="mid"))]
    got = [header_to_matcher(h, "h") for h in old]
    assert got[:4] == [{"name": "a", "exact": "x"}, {"name": "b", "prefix": "p"}, {"name": "c", "regex": "r+"},
                       {"name": "d", "present": True, "invert": True}]
    table = parse_route_config(route_config_to_dict(_config(*old)))
    md = Metadata(a="x", b="pq", c="rrr", e="yES", f="a-mid-b")
    assert table.match(md) is not None
    md["d"] = "present"
    assert table.match(md) is None


def test_what_cannot_be_honoured_is_refused_with_a_reason():
    redirect = RouteConfiguration(name="n", virtual_hosts=[rc.VirtualHost(routes=[
        rc.Route(name="r", redirect=rc.RedirectAction(host_redirect="x"))])])
    with pytest.raises(UnsupportedRoute, match="only forwarding routes"):
        route_config_to_dict(redirect)
    bad_regex = _config(rc.HeaderMatcher(name="a", safe_regex_match=RegexMatcher(regex="(")))
    assert any("invalid regex" in p for p in check_route_config(bad_regex))
    dup = RouteConfiguration(name="n", virtual_hosts=[rc.VirtualHost(routes=[
        rc.Route(name="r", route=rc.RouteAction(cluster="c")), rc.Route(name="r", route=rc.RouteAction(cluster="c"))])])
    assert any("duplicate route name 'r'" in p for p in check_route_config(dup))
