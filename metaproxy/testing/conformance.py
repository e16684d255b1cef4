"""The codec conformance kit: a reusable pytest suite every codec runs with its own samples.

Subclass :class:`CodecConformance` in a test module, set ``codec_class`` and
give complete sample frames; pytest then runs every ``test_*`` method below
against your codec::

    class TestMyCodec(CodecConformance):
        codec_class = MyCodec
        requests = [bytes.fromhex("...")]
        responses = [bytes.fromhex("...")]

Failures are written for a protocol author: which sample, which split offset,
which mutation key, what ``on_error`` produced.
"""

from __future__ import annotations

import random
from typing import Any, ClassVar

from metaproxy.codec import Codec, CodecError, DecodeStatus, Direction
from metaproxy.message import ErrorType, MessageType, Metadata, ProxyError, ResponseStatus

_ERROR_TYPES = (MessageType.ERROR, MessageType.RESPONSE)


def _show(data: bytes, limit: int = 48) -> str:
    text = bytes(data[:limit]).hex(" ")
    return text + (" ..." if len(data) > limit else "")


class CodecConformance:
    """Mix-in test class; see the module docstring."""

    codec_class: ClassVar[type[Codec] | None] = None
    options: ClassVar[dict[str, Any]] = {}
    #: Complete request frames, each exactly one message.
    requests: ClassVar[list[bytes]] = []
    #: Complete response frames, each exactly one message.
    responses: ClassVar[list[bytes]] = []
    #: Keys written by the mutation test; set ``carries_mutation = False`` if the wire cannot carry them.
    mutation: ClassVar[dict[str, str]] = {"x-conformance": "yes", "x-trace": "abc-123"}
    carries_mutation: ClassVar[bool] = True
    #: Keys that legitimately differ between a decode and a re-decode (e.g. sizes after a mutation).
    volatile_keys: ClassVar[frozenset[str]] = frozenset({"header_size", "body_size"})
    garbage_rounds: ClassVar[int] = 300
    #: Whether messages carry a request id that decode reads, encode rewrites and ``on_error`` copies.
    #: None: the codec's ``multiplexing`` flag says. A codec that is ordered on some transports yet
    #: has ids on all of them (Thrift's seqid) sets True, so the kit checks the ids everywhere.
    request_ids: ClassVar[bool | None] = None

    # -- helpers -----------------------------------------------------------------
    def codec(self, direction: Direction, max_message_bytes: int = 4 * 1024 * 1024) -> Codec:
        assert self.codec_class is not None, "set codec_class on your conformance test class"
        return self.codec_class(dict(self.options), direction, max_message_bytes)

    def checks_request_ids(self) -> bool:
        if self.request_ids is not None:
            return self.request_ids
        return bool(self.codec(Direction.REQUEST).multiplexing)

    def samples(self) -> list[tuple[str, Direction, bytes]]:
        out = [(f"request sample #{i}", Direction.REQUEST, f) for i, f in enumerate(self.requests)]
        out += [(f"response sample #{i}", Direction.RESPONSE, f) for i, f in enumerate(self.responses)]
        return out

    def decode_one(self, label: str, direction: Direction, frame: bytes) -> Metadata:
        codec = self.codec(direction)
        buf = bytearray(frame)
        md = Metadata()
        try:
            status = codec.decode(buf, md)
        except CodecError as exc:
            raise AssertionError(f"{label}: decoding the whole frame raised CodecError({exc}) "
                                 f"at offset {exc.offset}; frame: {_show(frame)}") from None
        assert status is DecodeStatus.DONE, (
            f"{label}: decoding the whole frame ({len(frame)} bytes) returned {status.name}, "
            f"expected DONE; frame: {_show(frame)}")
        assert not buf, (f"{label}: decode left {len(buf)} of {len(frame)} bytes unconsumed: "
                         "a sample must be exactly one message, and decode must consume exactly one")
        return md

    @staticmethod
    def stable(md: Metadata, volatile: frozenset[str]) -> dict[str, Any]:
        return {k: v for k, v in md.items() if k not in volatile}

    # -- tests ---------------------------------------------------------------------
    def test_samples_are_given(self) -> None:
        assert self.codec_class is not None, "set codec_class on your conformance test class"
        assert self.requests, "fill in `requests` with at least one complete request frame"
        assert self.responses, "fill in `responses` with at least one complete response frame"

    def test_decode_fills_well_known_keys(self) -> None:
        for label, direction, frame in self.samples():
            md = self.decode_one(label, direction, frame)
            assert isinstance(md.get("message_type"), MessageType), (
                f"{label}: metadata['message_type'] must be a MessageType, got {md.get('message_type')!r}")
            if self.checks_request_ids():
                assert "request_id" in md, f"{label}: metadata has no 'request_id'"
            assert md.frame, f"{label}: metadata.frame must hold the original message bytes"

    def test_decode_split_at_every_offset(self) -> None:
        for label, direction, frame in self.samples():
            expected = self.decode_one(label, direction, frame)
            for cut in range(len(frame)):
                codec = self.codec(direction)
                buf = bytearray(frame[:cut])
                md = Metadata()
                try:
                    status = codec.decode(buf, md)
                except CodecError as exc:
                    raise AssertionError(
                        f"{label}: with only the first {cut} of {len(frame)} bytes, decode raised "
                        f"CodecError({exc}); a partial message must return WAIT_FOR_DATA") from None
                assert status is DecodeStatus.WAIT_FOR_DATA, (
                    f"{label}: with only the first {cut} of {len(frame)} bytes, decode returned "
                    f"{status.name}; it must return WAIT_FOR_DATA until the whole message is there")
                assert bytes(buf) == frame[:cut], (
                    f"{label}: decode returned WAIT_FOR_DATA at split offset {cut} but changed the buffer")
                buf += frame[cut:]
                status = codec.decode(buf, md)
                assert status is DecodeStatus.DONE and not buf, (
                    f"{label}: after feeding the rest (split at offset {cut}) decode returned "
                    f"{status.name} with {len(buf)} bytes left")
                assert dict(md) == dict(expected), (
                    f"{label}: split at offset {cut} decoded different metadata:\n"
                    f"  split: {dict(md)}\n  whole: {dict(expected)}")

    def test_several_messages_in_one_buffer(self) -> None:
        for direction, frames in ((Direction.REQUEST, self.requests), (Direction.RESPONSE, self.responses)):
            if not frames:
                continue
            codec = self.codec(direction)
            seq = list(frames) * 2
            buf = bytearray(b"".join(seq))
            for index, frame in enumerate(seq):
                md = Metadata()
                status = codec.decode(buf, md)
                assert status is DecodeStatus.DONE, (
                    f"{direction.value} #{index} of {len(seq)} back-to-back messages returned {status.name}")
                assert md.frame == frame, (
                    f"{direction.value} #{index} of {len(seq)} back-to-back messages: metadata.frame "
                    f"is not that message's bytes (got {_show(md.frame)}, expected {_show(frame)})")
            assert not buf, f"{len(buf)} bytes left after decoding {len(seq)} back-to-back messages"

    def test_encode_without_changes_is_identity(self) -> None:
        for label, direction, frame in self.samples():
            md = self.decode_one(label, direction, frame)
            out = bytearray()
            self.codec(Direction.RESPONSE if direction is Direction.REQUEST else Direction.REQUEST).encode(
                md, {}, out)
            assert bytes(out) == frame, (
                f"{label}: encode with no mutation and the same request id must forward the original "
                f"bytes;\n  got      {_show(out)}\n  expected {_show(frame)}")

    def test_request_id_rewrite_round_trips(self) -> None:
        if not self.checks_request_ids():
            return
        for label, direction, frame in self.samples():
            md = self.decode_one(label, direction, frame)
            original = self.stable(md, self.volatile_keys)
            md["request_id"] = 7
            out = bytearray()
            self.codec(direction).encode(md, {}, out)
            again = self.decode_one(f"{label} re-encoded with request_id 7", direction, bytes(out))
            assert again["request_id"] == 7, (
                f"{label}: encode did not write the rewritten request id (read back {again['request_id']!r})")
            original["request_id"] = 7
            assert self.stable(again, self.volatile_keys) == original, (
                f"{label}: rewriting the request id changed other metadata:\n"
                f"  before: {original}\n  after:  {self.stable(again, self.volatile_keys)}")

    def test_mutation_is_applied(self) -> None:
        for label, direction, frame in self.samples():
            md = self.decode_one(label, direction, frame)
            codec = self.codec(direction)
            out = bytearray()
            codec.encode(md, dict(self.mutation), out)
            again = self.decode_one(f"{label} encoded with mutation {self.mutation}", direction, bytes(out))
            if not self.carries_mutation:
                assert bytes(out) == frame, (
                    f"{label}: this codec declares it cannot carry mutations, so encode must forward "
                    f"the original bytes unchanged")
                continue
            for key, value in self.mutation.items():
                assert again.get_str(key) == value, (
                    f"{label}: mutation key {key!r} did not survive encode+decode "
                    f"(read back {again.get(key)!r}, expected {value!r})")
            for key, value in self.stable(md, self.volatile_keys).items():
                assert again.get(key) == value, (
                    f"{label}: applying a mutation changed key {key!r} from {value!r} to {again.get(key)!r}")

    def test_on_error_is_a_decodable_error_reply(self) -> None:
        for index, frame in enumerate(self.requests):
            md = self.decode_one(f"request sample #{index}", Direction.REQUEST, frame)
            if md.get("message_type") not in (MessageType.REQUEST, MessageType.STREAM_INIT):
                continue
            for kind in ErrorType:
                out = bytearray()
                self.codec(Direction.REQUEST).on_error(md, ProxyError(kind, f"conformance {kind.value}"), out)
                assert out, f"on_error({kind.value}) for request sample #{index} wrote nothing"
                label = f"on_error({kind.value}) reply to request sample #{index}"
                reply = self.decode_one(label, Direction.RESPONSE, bytes(out))
                assert reply.get("message_type") in _ERROR_TYPES, (
                    f"{label} decodes as {reply.get('message_type')!r}, not an error or response")
                assert reply.get("response_status") == ResponseStatus.ERROR, (
                    f"{label} must decode with response_status error, got {reply.get('response_status')!r};"
                    f" bytes: {_show(out)}")
                if self.checks_request_ids():
                    assert reply.get("request_id") == md.get("request_id"), (
                        f"{label} carries request id {reply.get('request_id')!r}, "
                        f"expected the request's {md.get('request_id')!r}")

    def test_passthrough_decode_agrees_with_decode(self) -> None:
        """``decode_passthrough`` (upstream messages nobody reads beyond their status) against ``decode``."""
        for index, frame in enumerate(self.responses):
            label = f"response sample #{index}"
            full = self.decode_one(label, Direction.RESPONSE, frame)
            for cut in (*range(len(frame)), len(frame)):  # every split, then the whole frame at once
                codec = self.codec(Direction.RESPONSE)
                buf = bytearray(frame[:cut])
                md = Metadata()
                if cut < len(frame):
                    status = codec.decode_passthrough(buf, md)
                    assert status is DecodeStatus.WAIT_FOR_DATA and bytes(buf) == frame[:cut], (
                        f"{label}: decode_passthrough of the first {cut} of {len(frame)} bytes returned "
                        f"{status.name} or changed the buffer; it must wait for the whole message")
                    buf += frame[cut:]
                status = codec.decode_passthrough(buf, md)
                assert status is DecodeStatus.DONE and not buf, (
                    f"{label}: decode_passthrough (split at {cut}) returned {status.name} with {len(buf)} bytes left")
            for key in ("request_id", "message_type", "response_status"):
                assert (key in md) == (key in full), (
                    f"{label}: decode {'sets' if key in full else 'does not set'} {key!r}, decode_passthrough "
                    f"{'does' if key in md else 'does not'}")
            for key, value in md.items():
                assert full.get(key) == value, (
                    f"{label}: decode_passthrough set {key!r} to {value!r}, decode to {full.get(key)!r}")
            assert md.frame == full.frame, f"{label}: decode_passthrough kept other frame bytes"
            for mutation in ({}, dict(self.mutation)):
                outputs = []
                for decoded in (full, md):
                    again = Metadata(decoded, request_id=7) if "request_id" in decoded else Metadata(decoded)
                    again.frame, again.codec_state = decoded.frame, decoded.codec_state
                    out = bytearray()
                    self.codec(Direction.REQUEST).encode(again, dict(mutation), out)
                    outputs.append(bytes(out))
                assert outputs[0] == outputs[1], (
                    f"{label}: encode with mutation {mutation} after decode_passthrough wrote other bytes than "
                    f"after decode;\n  decode:      {_show(outputs[0])}\n  passthrough: {_show(outputs[1])}")

    def test_garbage_raises_only_codec_error(self) -> None:
        rng = random.Random(1234)
        seeds = [f for _, _, f in self.samples()]
        for round_ in range(self.garbage_rounds):
            if seeds and round_ % 2:
                data = bytearray(rng.choice(seeds))
                for _ in range(rng.randint(1, 4)):
                    data[rng.randrange(len(data))] = rng.randrange(256)
            else:
                data = bytearray(rng.randbytes(rng.randint(0, 64)))
            for direction in Direction:
                codec = self.codec(direction)
                decoders = (codec.decode, codec.decode_passthrough) if direction is Direction.RESPONSE \
                    else (codec.decode,)
                for decode in decoders:
                    buf = bytearray(data)
                    try:
                        for _ in range(64):
                            if decode(buf, Metadata()) is not DecodeStatus.DONE:
                                break
                    except CodecError:
                        pass
                    except Exception as exc:  # the point of the test
                        raise AssertionError(
                            f"{decode.__name__} of garbage as {direction.value} raised {type(exc).__name__}({exc}); "
                            f"bad bytes must raise only CodecError. input: {bytes(data).hex()}") from None

    def test_oversized_message_is_refused(self) -> None:
        for label, direction, frame in self.samples():
            limit = max(1, len(frame) - 1)
            codec = self.codec(direction, max_message_bytes=limit)
            try:
                status = codec.decode(bytearray(frame), Metadata())
            except CodecError:
                continue
            raise AssertionError(
                f"{label}: a {len(frame)}-byte message with max_message_bytes={limit} returned "
                f"{status.name}; it must raise CodecError (call self.check_size with the declared size)")
