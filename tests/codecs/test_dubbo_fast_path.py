"""The Dubbo codec's fast paths read exactly what the general Hessian2 reader reads.

Three shortcuts are checked here against the general path:

* ``hessian2.read_plain`` reads nulls and one-chunk ASCII strings in a loop; it
  must stop exactly where that stops being true (31/32 and 1023/1024 characters,
  the first non-ASCII character, a chunked string, bytes cut short) and leave the
  rest to ``Hessian2Reader``.
* A codec remembers its connection's last request header strings and last
  all-plain attachment map, and does not read the same bytes twice. A memo must
  never answer for different bytes, nor for a map whose reading depends on
  classes defined earlier in the body.
* An OK response's result flag is read from its one-octet form directly.
* ``hessian2.skip_plain`` skips arguments and results that are short ASCII
  strings, nulls, booleans and one-octet ints without a reader; it must stop
  where the reader is needed and end exactly where the reader would.

The reference is the same codec with ``read_plain`` and ``skip_plain`` made to read nothing and a
fresh codec per message (no memo): every Metadata key, the codec state, the
bytes encode writes with a new id and with a Mutation, and every error must be
the same.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_dubbo import SSL_REQUESTS, js_frames, ssl_request

from metaproxy.codec import CodecError, DecodeStatus, Direction
from metaproxy.message import Metadata
from metaproxy_codecs.dubbo import DubboCodec
from metaproxy_codecs.dubbo import codec as dubbo_codec
from metaproxy_codecs.dubbo import protocol as p
from metaproxy_codecs.dubbo.hessian2 import (
    Hessian2Reader,
    HessianError,
    read_plain,
    skip_plain,
    write_int,
    write_string,
)
from tests.fuzz import messages as m
from tests.fuzz.props import FAST, mutate

#: Tests that swap a module global of the codec to compare its fast and general paths: compiled code
#: calls its own functions directly, so they run in the interpreted pass of `make test` (tests/conftest.py).
INTERPRETED = pytest.mark.interpreted


def s(text: str) -> bytes:
    out = bytearray()
    write_string(out, text)
    return bytes(out)


def chunked(*parts: str) -> bytes:
    """A string written as 'R' chunks then a final 'S' chunk (ASCII parts: units == bytes)."""
    out = b"".join(b"R" + struct.pack(">H", len(part)) + part.encode() for part in parts[:-1])
    return out + b"S" + struct.pack(">H", len(parts[-1])) + parts[-1].encode()


def attachments(*pairs: tuple[bytes, bytes]) -> bytes:
    return b"H" + b"".join(key + value for key, value in pairs) + b"Z"


def request(*, head: tuple[bytes, ...] | None = None, args: tuple[bytes, ...] = (s("world"),),
            attach: bytes | None = None, request_id: int = 1) -> bytes:
    if head is None:
        head = (s("2.0.2"), s("org.example.Greeter"), s("1.0.0"), s("sayHello"), s("Ljava/lang/String;"))
    if attach is None:
        attach = attachments((s("path"), s("org.example.Greeter")), (s("x-user"), s("alice")))
    body = b"".join(head) + b"".join(args) + attach
    return p.HEADER.pack(p.MAGIC, p.FLAG_REQUEST | p.FLAG_TWOWAY | p.HESSIAN2, 0, request_id, len(body)) + body


def response(value: bytes, flag: bytes, attach: bytes = b"") -> bytes:
    body = flag + value + attach
    return p.HEADER.pack(p.MAGIC, p.HESSIAN2, p.OK, 9, len(body)) + body


def _read_nothing(buf: bytes, pos: int, count: int, values: Any, ends: Any = None) -> int:
    return pos


def _skip_nothing(buf: bytes, pos: int, count: int) -> tuple[int, int]:
    return pos, 0


def observe(frames: list[bytes], direction: Direction, fast: bool, monkeypatch: pytest.MonkeyPatch) -> list:
    """What decoding ``frames`` in a row shows: one codec with every fast path, or the general path alone."""
    with monkeypatch.context() as patch:
        if not fast:
            patch.setattr(dubbo_codec, "read_plain", _read_nothing)
            patch.setattr(dubbo_codec, "skip_plain", _skip_nothing)
        shared = DubboCodec(direction=direction)
        seen = []
        for frame in frames:
            codec = shared if fast else DubboCodec(direction=direction)
            md = Metadata()
            buf = bytearray(frame)
            try:
                status = codec.decode(buf, md)
            except CodecError as exc:
                seen.append(("error", str(exc), exc.offset))
                continue
            if status is not DecodeStatus.DONE:
                seen.append((status, bytes(buf)))
                continue
            state = md.codec_state
            outputs = []
            for mutation in ({}, {"x-user": "bob", "path": "other.Path", "x-new": "v\u00e9"}):
                again = Metadata(md, request_id=12345)
                again.frame, again.codec_state = md.frame, state
                out = bytearray()
                codec.encode(again, mutation, out)
                outputs.append(bytes(out))
            mutated = Metadata()
            if state.attach_start >= 0:  # what the mutated bytes read as, by a codec that never saw them
                DubboCodec(direction=direction).decode(bytearray(outputs[1]), mutated)
                assert mutated["x-new"] == "v\u00e9", mutated
            seen.append((list(md.items()), list(mutated.items()), md.frame, bytes(buf), state.flag, state.result_flag,
                         state.attach_start,
                         state.pairs_start, state.attach_end, list(state.map_items), list(state.map_ends), outputs))
    return seen


def same_both_ways(frames: list[bytes], monkeypatch: pytest.MonkeyPatch,
                   direction: Direction = Direction.REQUEST) -> list:
    fast = observe(frames, direction, True, monkeypatch)
    assert fast == observe(frames, direction, False, monkeypatch)
    return fast


# -- skip_plain -----------------------------------------------------------------------------------
PLAIN_VALUES = [s(""), s("a" * 31), b"N", b"T", b"F", b"\x80", b"\x90", b"\xbf", s("abc")]
OTHER_VALUES = [s("a" * 32), s("\u00e9t\u00e9"), b"\xc8\x00", b"\x7f", chunked("ab", "cd"), b"H\x01aZ",
                b"\x5b", b"\xd4\x00\x00"]


@pytest.mark.parametrize("value", PLAIN_VALUES)
def test_skip_plain_ends_where_the_reader_ends(value: bytes) -> None:
    data = b"pad" + value + value + s("next")
    reader = Hessian2Reader(data, 3)
    reader.skip()
    reader.skip()
    assert skip_plain(data, 3, 2) == (reader.pos, 2)
    assert skip_plain(data, 3, 1) == (3 + len(value), 1)


@pytest.mark.parametrize("value", OTHER_VALUES)
def test_skip_plain_leaves_every_other_value_to_the_reader(value: bytes) -> None:
    data = s("x") + value + s("y")
    assert skip_plain(data, 0, 3) == (len(s("x")), 1)


@pytest.mark.parametrize("text", ["abc", "a" * 31])
def test_skip_plain_never_skips_past_a_cut(text: str) -> None:
    data = s(text)
    for cut in range(len(data)):
        assert skip_plain(data[:cut], 0, 1) == (0, 0)
    assert skip_plain(data, 0, 5) == (len(data), 1)


# -- read_plain -----------------------------------------------------------------------------------
TEXTS = ["", "a", "x" * 31, "x" * 32, "y" * 1023, "y" * 1024, "z" * 1025, "q" * 40000, "\u00e9", "ab\u00e9",
         "\u00e9" + "a" * 31, "a" * 30 + "\u00e9", "\u4e2d\u6587", "e\U0001F600", "a" * 1022 + "\u00e9"]


@pytest.mark.parametrize("text", TEXTS, ids=lambda t: f"{len(t)}:{t[-1:].encode('unicode_escape').decode()}")
def test_read_plain_stops_exactly_where_the_general_reader_is_needed(text: str) -> None:
    data = s(text) + s("next") + b"N"
    values: list = []
    ends: list = []
    pos = read_plain(data, 0, 3, values, ends)
    plain = text.isascii() and len(text) <= 1023
    assert values == ([text, "next", None] if plain else [])
    reader = Hessian2Reader(data, pos)
    rest = [reader.read_string() for _ in range(3 - len(values))]
    assert values + rest == [text, "next", None]
    assert reader.pos == len(data)
    if plain:
        assert ends == [len(s(text)), len(s(text)) + 5, len(data)]
    shifted: list = []
    read_plain(b"pad" + data, 3, 3, [], shifted)
    assert shifted == ends  # counted from where the read starts


def test_read_plain_stops_at_count_and_at_the_first_other_value() -> None:
    data = s("a" * 40) + b"N" + s("b") + write_int_bytes(7)
    values: list = []
    ends: list = []
    assert read_plain(data, 0, 2, values, ends) == 43 and values == ["a" * 40, None] and ends == [42, 43]
    values, ends = [], []
    assert read_plain(data, 0, 10, values, ends) == 45 and values == ["a" * 40, None, "b"] and ends == [42, 43, 45]


def write_int_bytes(value: int) -> bytes:
    out = bytearray()
    write_int(out, value)
    return bytes(out)


@pytest.mark.parametrize("data", [chunked("ab", "cd"), chunked("", "x"), b"\x05abc", b"\x30", b"\x31\x00abc",
                                  b"\x33\xff" + b"a" * 10, b"I\x00\x00\x00\x01", b"Z"])
def test_read_plain_leaves_everything_else_to_the_reader(data: bytes) -> None:
    values: list = []
    assert read_plain(data, 0, 5, values, []) == 0 and values == []


@pytest.mark.parametrize("text", ["abc", "a" * 31, "a" * 200])
def test_read_plain_never_reads_past_a_cut(text: str) -> None:
    data = s(text)
    for cut in range(len(data)):
        values: list = []
        assert read_plain(data[:cut], 0, 1, values, []) == 0 and values == []
        with pytest.raises(HessianError):
            Hessian2Reader(data[:cut]).read_string()


def test_string_arguments_skip_the_same_way() -> None:
    for text in TEXTS + [chunked("abc", "def")]:
        data = text if isinstance(text, bytes) else s(text)
        assert Hessian2Reader(data + b"N").skip() == len(data)


# -- the codec --------------------------------------------------------------------------------------
HEADS = {
    "null version": (s("2.0.2"), s("org.example.Greeter"), b"N", s("sayHello"), s("Ljava/lang/String;")),
    "non-ascii interface": (s("2.0.2"), s("org.\u00e9xample.Greeter"), s("1.0.0"), s("sayHello"),
                            s("Ljava/lang/String;")),
    "chunked method": (s("2.0.2"), s("org.example.Greeter"), s("1.0.0"), chunked("say", "Hello"),
                       s("Ljava/lang/String;")),
    "long descriptor": (s("2.0.2"), s("org.example.Greeter"), s("1.0.0"), s("many"),
                        s("Ljava/lang/String;" * 60)),
    "a number where a string must be": (s("2.0.2"), write_int_bytes(5), s("1.0.0"), s("sayHello"), s("")),
}


@pytest.mark.parametrize("name", sorted(HEADS))
@INTERPRETED
def test_request_headers(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    head = HEADS[name]
    args = tuple(s("w") for _ in range(60)) if name == "long descriptor" else (s("world"),)
    frames = [request(head=head, args=args), request(head=head, args=args, request_id=2)]
    same_both_ways(frames, monkeypatch)


@pytest.mark.parametrize("value", ["", "v" * 31, "v" * 32, "v" * 1023, "v" * 1024, "\u00e9t\u00e9", "\u4e2d"])
@INTERPRETED
def test_attachment_values_at_the_fast_path_boundaries(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    attach = attachments((s("path"), s("p")), (s("x-user"), s(value)), (s("tail"), s("t")))
    seen = same_both_ways([request(attach=attach), request(attach=attach, request_id=2)], monkeypatch)
    assert dict(seen[1][0])["x-user"] == value


@pytest.mark.parametrize("attach", [
    b"N",
    attachments(),
    attachments((s("n"), write_int_bytes(3)), (s("x-user"), s("alice"))),  # a number: general path
    attachments((s("x-user"), b"N"), (b"N", s("v")), (s("k"), s("v"))),   # nulls either side
    attachments((s("k"), chunked("ab", "c")), (s("x-user"), s("alice"))),  # chunked after nothing plain
    attachments((s("x-user"), s("alice")), (s("k"), chunked("ab", "c"))),  # chunked after a plain pair
    attachments((s("x-user"), s("a")), (s("x-user"), s("b"))),  # duplicate key: the last wins
    attachments((s("service"), s("spoof")), (s("x-user"), s("alice"))),  # never overrides a codec key
    b"M" + s("java.util.HashMap") + s("x-user") + s("alice") + b"Z",
    b"H" + s("x-user") + s("alice"),  # no end marker
    b"H" + s("x-user") + s("alice") + b"ZZ",  # bytes after the map
    b"H" + s("x-user") + b"Z",  # a key without a value
    attachments((s("bin"), b"\x20"), (s("x-user"), s("a" * 40))),  # empty binary: 0x20 is not a string tag
    attachments((s("bin"), b"\x23abc"), (s("x-user"), s("alice"))),  # 3-byte binary
    b"I",
])
@INTERPRETED
def test_attachment_maps(attach: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    same_both_ways([request(attach=attach), request(attach=attach, request_id=2), request()], monkeypatch)


@INTERPRETED
def test_a_remembered_map_moves_with_the_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    attach = attachments((s("path"), s("p")), (s("x-user"), s("alice")))
    frames = [request(attach=attach), request(args=(s("w" * 300),), attach=attach), request(attach=attach)]
    seen = same_both_ways(frames, monkeypatch)
    assert seen[1][7] - seen[0][7] == len(s("w" * 300)) - len(s("world"))  # the map starts later
    assert seen[0][10] == seen[1][10]  # offsets are relative to the map's first pair


@INTERPRETED
def test_a_map_of_the_same_length_with_other_bytes_is_read_again(monkeypatch: pytest.MonkeyPatch) -> None:
    first = attachments((s("x-user"), s("alice")))
    second = attachments((s("x-user"), s("alica")))
    seen = same_both_ways([request(attach=first), request(attach=second)], monkeypatch)
    assert dict(seen[1][0])["x-user"] == "alica"


@INTERPRETED
def test_a_map_that_ends_with_the_remembered_one_is_not_taken_for_it(monkeypatch: pytest.MonkeyPatch) -> None:
    last = attachments((s("k2"), s("v2")))
    longer = attachments((s("k1"), s("xH")), (s("k2"), s("v2")))  # its tail is the bytes of ``last``
    assert longer.endswith(last)
    seen = same_both_ways([request(attach=last), request(attach=longer)], monkeypatch)
    assert dict(seen[1][0])["k1"] == "xH"


@INTERPRETED
def test_a_map_that_refers_to_a_class_is_never_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    # The argument defines class #0 (one field); an attachment value is an object of that class.
    class_def = b"C" + s("org.example.V") + write_int_bytes(1) + s("id")
    instance = b"\x60" + write_int_bytes(7)
    head = (s("2.0.2"), s("org.example.Greeter"), s("1.0.0"), s("save"), s("Lorg/example/V;"))
    attach = attachments((s("x-user"), s("alice")), (s("obj"), instance))
    defined = request(head=head, args=(class_def + instance,), attach=attach)
    undefined = request(head=head, args=(s("plain"),), attach=attach)  # class #0 is not defined in this body
    seen = same_both_ways([defined, undefined, defined], monkeypatch)
    assert seen[1][0] == "error"


@INTERPRETED
def test_same_head_other_arguments_and_attachments(monkeypatch: pytest.MonkeyPatch) -> None:
    frames = [request(), request(args=(s("planet"),)),
              request(attach=attachments((s("x-user"), s("bob")))), request(args=(write_int_bytes(1),))]
    seen = same_both_ways(frames, monkeypatch)
    assert [dict(md)["x-user"] for md, *_ in seen] == ["alice", "alice", "bob", "alice"]


@pytest.mark.parametrize("cut", range(16, 16 + len(request()) - 16))
@INTERPRETED
def test_every_cut_body_fails_the_same(cut: int, monkeypatch: pytest.MonkeyPatch) -> None:
    frame = request()
    body_len = cut - 16
    short = p.HEADER.pack(p.MAGIC, 0xC2, 0, 1, body_len) + frame[16:cut]
    same_both_ways([frame, short, frame], monkeypatch)


@INTERPRETED
def test_frames_from_real_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    frames = [*SSL_REQUESTS, *SSL_REQUESTS, js_frames()["sayHello"], js_frames()["all argument types"],
              js_frames()["no arguments"], js_frames()["sayHello"],
              ssl_request("sayHello", ["\u00e9" * 40], context={"x-user": "\u00e9"})]
    same_both_ways(frames, monkeypatch)


@pytest.mark.parametrize("flag", [b"\x90", b"\x91", b"\x92", b"\x93", b"\x94", b"\x95", b"\x96", b"\x8f",
                                  b"I\x00\x00\x00\x01", b"\xc8\x04", b"\xd4\x00\x02", b"N", b""])
@INTERPRETED
def test_response_flags_in_every_encoding(flag: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    value = b"" if flag in (b"\x92", b"\x95", b"\xd4\x00\x02") else s("x" * 8)
    attach = attachments((s("x-served-by"), s("p1"))) if flag in (b"\x93", b"\x94", b"\x95") else b""
    frame = response(value, flag, attach)
    same_both_ways([frame, frame], monkeypatch, Direction.RESPONSE)


@INTERPRETED
def test_the_fast_paths_are_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    codec = DubboCodec()
    calls = []
    real = dubbo_codec.read_plain
    monkeypatch.setattr(dubbo_codec, "read_plain", lambda *a: calls.append(a[2]) or real(*a))
    for request_id in (1, 2):
        md = Metadata()
        assert codec.decode(bytearray(request(request_id=request_id)), md) is DecodeStatus.DONE
        assert (md["method"], md["x-user"]) == ("sayHello", "alice")
    # First request: the header strings, then the attachments; second: the memos answer for both.
    assert calls[0] == 5 and len(calls) == 2


@INTERPRETED
def test_plain_arguments_and_results_are_skipped_without_a_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    made = []

    class CountingReader(Hessian2Reader):
        __slots__ = ()

        def __init__(self, buf: bytes, pos: int = 0) -> None:
            made.append(pos)
            super().__init__(buf, pos)

    monkeypatch.setattr(dubbo_codec, "Hessian2Reader", CountingReader)
    head = (s("2.0.2"), s("org.example.Greeter"), s("1.0.0"), s("sayHello"), s("Ljava/lang/String;IZ"))
    frame = request(head=head, args=(s("world"), b"\x91", b"T"))
    codec = DubboCodec()
    for _ in range(2):
        md = Metadata()
        assert codec.decode(bytearray(frame), md) is DecodeStatus.DONE
        assert md["x-user"] == "alice"
    # One reader in all: the first request's attachment map (the second one's is the memo's).
    assert made == [md.codec_state.attach_start]
    md = Metadata()
    answer = response(s("hello"), b"\x91")
    assert DubboCodec(direction=Direction.RESPONSE).decode(bytearray(answer), md) is DecodeStatus.DONE
    assert md["response_status"] == "success" and md.codec_state.attach_start == len(answer)
    assert len(made) == 1


@FAST
@given(st.lists(m.dubbo_requests(), min_size=1, max_size=4),
       st.lists(st.tuples(st.integers(0, 100_000), st.integers(0, 255)), max_size=3),
       st.none() | st.integers(0, 100_000))
def test_generated_and_damaged_requests_agree(samples: list[m.Sample], edits: list, truncate: int | None) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        frames = [sample.frame for sample in samples]
        same_both_ways(frames + [mutate(frames[0], edits, truncate)] + frames, monkeypatch)


@FAST
@given(st.lists(m.dubbo_responses(), min_size=1, max_size=4))
def test_generated_responses_agree(samples: list[m.Sample]) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        frames = [sample.frame for sample in samples]
        same_both_ways(frames + frames, monkeypatch, Direction.RESPONSE)


# -- decode_passthrough ---------------------------------------------------------------------------
@FAST
@given(m.dubbo_responses(), st.sampled_from([{}, {"x-user": "bob", "x-new": "v\u00e9"}]))
def test_passthrough_reads_what_decode_reads_and_encodes_alike(sample: m.Sample, mutation: dict) -> None:
    full, passed = Metadata(), Metadata()
    assert DubboCodec(direction=Direction.RESPONSE).decode(bytearray(sample.frame), full) is DecodeStatus.DONE
    buf = bytearray(sample.frame + sample.frame)
    assert DubboCodec(direction=Direction.RESPONSE).decode_passthrough(buf, passed) is DecodeStatus.DONE
    assert bytes(buf) == sample.frame  # exactly one message consumed
    assert {k: full.get(k) for k in passed} == dict(passed)
    assert {k: k in passed for k in ("request_id", "message_type", "response_status")} == \
        {k: k in full for k in ("request_id", "message_type", "response_status")}
    outputs = []
    for md in (full, passed):
        again = Metadata(md, request_id=99)
        again.frame, again.codec_state = md.frame, md.codec_state
        out = bytearray()
        DubboCodec().encode(again, dict(mutation), out)
        outputs.append(bytes(out))
    assert outputs[0] == outputs[1]


@INTERPRETED
def test_passthrough_reads_only_the_header_and_the_result_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dubbo_codec, "Hessian2Reader", None)  # any read of the body would fail
    monkeypatch.setattr(dubbo_codec, "skip_plain", None)
    for flag, status in ((b"\x91", "success"), (b"\x94", "success"), (b"\x90", "error"), (b"\x93", "error")):
        md = Metadata()
        frame = response(s("hello"), flag, attachments((s("k"), s("v"))) if flag[0] >= 0x93 else b"")
        assert DubboCodec(direction=Direction.RESPONSE).decode_passthrough(bytearray(frame), md) is DecodeStatus.DONE
        assert (md["request_id"], md["response_status"], md["message_type"].value) == (9, status, "response")
    error = p.HEADER.pack(p.MAGIC, p.HESSIAN2, p.SERVICE_ERROR, 5, 3) + s("no")
    md = Metadata()
    assert DubboCodec(direction=Direction.RESPONSE).decode_passthrough(bytearray(error), md) is DecodeStatus.DONE
    assert (md["response_status"], md["message_type"].value, md["request_id"]) == ("error", "error", 5)
