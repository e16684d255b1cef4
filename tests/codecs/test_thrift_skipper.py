"""Property test of the unframed message walker against the Apache library's own serialisation.

Hypothesis builds arbitrary nested Thrift values (every type, containers of
containers, structs with sparse and far-apart field ids); the Apache library
writes them; the codec must find exactly where each unframed message ends,
and must wait (not fail) when the message is cut anywhere.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from test_thrift_conformance import message
from thrift.Thrift import TMessageType, TType

from metaproxy.codec import DecodeStatus
from metaproxy.message import Metadata
from metaproxy_codecs.thrift import ThriftCodec

_LEAVES = {
    TType.BOOL: st.booleans(),
    TType.BYTE: st.integers(-128, 127),
    TType.I16: st.integers(-(2**15), 2**15 - 1),
    TType.I32: st.integers(-(2**31), 2**31 - 1),
    TType.I64: st.integers(-(2**63), 2**63 - 1),
    TType.DOUBLE: st.floats(allow_nan=False),
    TType.STRING: st.text(max_size=20),
    TType.UUID: st.uuids(),
}

# A type descriptor: a leaf type id, or (LIST|SET, elem), (MAP, key, value), (STRUCT, [field descriptors]).
descriptors = st.recursive(
    st.sampled_from(sorted(_LEAVES)),
    lambda inner: st.one_of(
        st.tuples(st.sampled_from([TType.LIST, TType.SET]), inner),
        st.tuples(st.just(TType.MAP), inner, inner),
        st.tuples(st.just(TType.STRUCT), st.lists(inner, max_size=4)),
    ),
    max_leaves=12,
)


def _ttype(desc: Any) -> int:
    return desc if isinstance(desc, int) else desc[0]


def values(desc: Any) -> st.SearchStrategy:
    """Values for ``desc`` in the (ttype, value) shape test_thrift_conformance.write_value takes."""
    if isinstance(desc, int):
        return _LEAVES[desc]
    kind = desc[0]
    if kind in (TType.LIST, TType.SET):
        return st.lists(values(desc[1]), max_size=5).map(lambda items, e=_ttype(desc[1]): (e, items))
    if kind == TType.MAP:
        pairs = st.lists(st.tuples(values(desc[1]), values(desc[2])), max_size=4)
        return pairs.map(lambda items, k=_ttype(desc[1]), v=_ttype(desc[2]): (k, v, items))
    return struct_values(desc[1])


def struct_values(fields: list[Any]) -> st.SearchStrategy:
    gaps = st.lists(st.integers(1, 40), min_size=len(fields), max_size=len(fields))
    return st.tuples(gaps, st.tuples(*[values(f) for f in fields])).map(
        lambda gv: [(sum(gv[0][:i + 1]), _ttype(f), v) for i, (f, v) in enumerate(zip(fields, gv[1], strict=True))])


@settings(max_examples=150, deadline=None)
@given(data=st.data(), protocol=st.sampled_from(["binary", "compact"]), cut=st.floats(0, 1, exclude_max=True))
def test_walker_finds_the_end_of_any_message_apache_writes(data: st.DataObject, protocol: str, cut: float) -> None:
    fields = data.draw(st.lists(descriptors, max_size=5))
    body = data.draw(struct_values(fields))
    frame = message("walk", TMessageType.CALL, 1, body, transport="unframed", protocol=protocol)
    trailing = message("next", TMessageType.CALL, 2, [], transport="unframed", protocol=protocol)
    codec = ThriftCodec({"transport": "unframed", "protocol": protocol})
    split = int(len(frame) * cut)
    buf = bytearray(frame[:split])
    assert codec.decode(buf, Metadata()) is DecodeStatus.WAIT_FOR_DATA
    buf += frame[split:] + trailing
    md = Metadata()
    assert codec.decode(buf, md) is DecodeStatus.DONE
    assert md.frame == frame and bytes(buf) == trailing
    assert md["method"] == "walk"
