"""Property tests of every codec (tinyrpc, Thrift, Dubbo, Redis) with hypothesis: see props.py."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metaproxy.codec import Codec, DecodeStatus
from metaproxy.message import Metadata
from metaproxy_codecs.dubbo import DubboCodec
from metaproxy_codecs.redis import RedisCodec
from metaproxy_codecs.thrift import ThriftCodec
from metaproxy_codecs.tinyrpc import TinyRpcCodec
from tests.fuzz import messages as m
from tests.fuzz.props import FAST, check_arbitrary, check_round_trip, check_splits, make, mutate, same_side

_thrift_options = st.fixed_dictionaries({
    "transport": st.sampled_from(["auto", "framed", "unframed", "header"]),
    "protocol": st.sampled_from(["auto", "binary", "compact"]),
})


@st.composite
def _thrift_runs(draw: st.DrawFn) -> list[m.Sample]:
    transport = draw(st.sampled_from(["framed", "unframed", "header"]))
    protocol = draw(st.sampled_from(["binary", "compact"]))
    return draw(st.lists(m.thrift_messages(transport, protocol), min_size=1, max_size=4))


#: name -> (codec class, valid messages, runs of valid messages, codec options for arbitrary bytes)
CODECS: dict[str, tuple[type[Codec], Any, Any, Any]] = {
    "tinyrpc": (TinyRpcCodec, m.tinyrpc_messages(), st.lists(m.tinyrpc_messages(), min_size=1, max_size=4),
                st.just({})),
    "thrift": (ThriftCodec, m.thrift_messages(), _thrift_runs(), _thrift_options),
    "dubbo": (DubboCodec, m.dubbo_messages, st.lists(m.dubbo_messages, min_size=1, max_size=4), st.just({})),
    "redis": (RedisCodec, m.redis_messages, st.lists(m.redis_messages, min_size=1, max_size=4), st.just({})),
}
NAMES = sorted(CODECS)
_points = st.lists(st.integers(0, 100_000), max_size=6)
_edits = st.lists(st.tuples(st.integers(0, 100_000), st.integers(0, 255)), min_size=1, max_size=4)


@pytest.mark.parametrize("name", NAMES)
def test_valid_messages_round_trip(name: str) -> None:
    codec_class, messages, _, _ = CODECS[name]

    @FAST
    @given(messages)
    def run(sample: m.Sample) -> None:
        check_round_trip(codec_class, sample)

    run()


@pytest.mark.parametrize("name", NAMES)
def test_split_points_never_change_the_result(name: str) -> None:
    codec_class, _, runs, _ = CODECS[name]

    @FAST
    @given(runs, _points)
    def run(samples: list[m.Sample], points: list[int]) -> None:
        check_splits(codec_class, same_side(samples), points)

    run()


@pytest.mark.parametrize("name", NAMES)
def test_arbitrary_bytes_only_raise_codec_error(name: str) -> None:
    codec_class, _, _, options = CODECS[name]

    @FAST
    @given(options, st.binary(max_size=600))
    def run(opts: dict[str, Any], data: bytes) -> None:
        check_arbitrary(codec_class, opts, data)
        check_arbitrary(codec_class, opts, data, max_message_bytes=32)

    run()


@pytest.mark.parametrize("name", NAMES)
def test_damaged_valid_messages_only_raise_codec_error(name: str) -> None:
    codec_class, messages, _, options = CODECS[name]

    @FAST
    @given(messages, options, _edits, st.none() | st.integers(0, 100_000))
    def run(sample: m.Sample, opts: dict[str, Any], edits: list[tuple[int, int]], truncate: int | None) -> None:
        data = mutate(sample.frame, edits, truncate)
        check_arbitrary(codec_class, sample.options, data)
        check_arbitrary(codec_class, opts, data)

    run()


@pytest.mark.parametrize("name", NAMES)
def test_a_prefix_of_a_valid_message_waits(name: str) -> None:
    """Any strict prefix of a valid message is WAIT_FOR_DATA (never an error, never a wrong DONE)."""
    codec_class, messages, _, _ = CODECS[name]

    @FAST
    @given(messages, st.integers(0, 100_000))
    def run(sample: m.Sample, point: int) -> None:
        prefix = sample.frame[:point % len(sample.frame)]
        buf = bytearray(prefix)
        status = make(codec_class, sample.options, sample.direction).decode(buf, Metadata())
        if name == "redis" and sample.direction.value == "request" and not prefix.startswith(b"*"):
            return  # an empty buffer; inline commands are lines, covered by the split test
        assert status is DecodeStatus.WAIT_FOR_DATA and bytes(buf) == prefix

    run()
