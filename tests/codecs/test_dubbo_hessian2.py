"""The Hessian2 skipper against values encoded by independent encoders (hessian.js, dubbo-ssl-python)."""

from __future__ import annotations

import json
import subprocess
from functools import lru_cache
from pathlib import Path

import pytest
from dubbo_ssl.codec.decoder import Response as SslDecoder
from dubbo_ssl.codec.encoder import Object as SslObject
from dubbo_ssl.codec.encoder import Request as SslEncoder

from metaproxy_codecs.dubbo.hessian2 import COMPLEX, Hessian2Reader, HessianError, write_int, write_string

JS_DIR = Path(__file__).resolve().parents[1] / "js"


def run_node(script: str, stdin: str = "") -> str:
    """Run one of tests/js/*.js with node; its node_modules come from `make deps-dubbo`."""
    assert (JS_DIR / "node_modules" / "hessian.js").is_dir(), (
        "tests/js/node_modules is missing: run `make deps-dubbo` (npm ci in tests/js)")
    done = subprocess.run(["node", str(JS_DIR / script)], input=stdin, capture_output=True, text=True,
                          timeout=60, cwd=JS_DIR, check=False)
    assert done.returncode == 0, f"node {script} failed: {done.stderr}"
    return done.stdout


@lru_cache(maxsize=1)
def hessian_js_samples() -> dict[str, dict]:
    return json.loads(run_node("hessian_samples.js"))


EXPECTED_SAMPLES = {
    "null", "booleans", "ints", "longs", "doubles", "strings", "chunked string", "chunked non-ascii string",
    "binary", "chunked binary", "dates", "typed short list", "typed long list", "untyped short list",
    "untyped long list", "java.util.ArrayList", "variable typed list", "variable untyped list", "untyped map",
    "java.util.HashMap", "typed map", "es6 map", "object", "objects sharing a class", "many classes",
    "nested object", "reference", "map reference", "enum", "null inside",
}


def test_hessian_js_covers_every_type() -> None:
    samples = hessian_js_samples()
    assert set(samples) == EXPECTED_SAMPLES
    joined = bytes.fromhex("".join(s["hex"] for s in samples.values()))
    # Every form the brief lists shows up at least once in what hessian.js wrote.
    for tag, what in ((0x52, "string chunk"), (0x41, "binary chunk"), (0x4A, "date ms"), (0x4B, "date min"),
                      (0x55, "variable typed list"), (0x57, "variable untyped list"), (0x56, "fixed typed list"),
                      (0x58, "fixed untyped list"), (0x4D, "typed map"), (0x48, "untyped map"), (0x43, "class def"),
                      (0x4F, "object by int index"), (0x51, "reference"), (0x4C, "long"), (0x59, "long as int")):
        assert tag in joined, f"hessian.js samples contain no {what} (0x{tag:02x})"


@pytest.mark.parametrize("name", sorted(EXPECTED_SAMPLES))
def test_skipper_ends_exactly_where_hessian_js_values_end(name: str) -> None:
    sample = hessian_js_samples()[name]
    data = bytes.fromhex(sample["hex"])
    reader = Hessian2Reader(data)
    for index in range(sample["count"]):
        assert reader.pos < len(data), f"{name}: ran out of bytes before value #{index}"
        reader.skip()
    assert reader.pos == len(data), f"{name}: stopped at {reader.pos} of {len(data)}"


@pytest.mark.parametrize("name", ["strings", "chunked string", "chunked binary", "object", "untyped map"])
def test_truncated_values_raise_hessian_error(name: str) -> None:
    data = bytes.fromhex(hessian_js_samples()[name]["hex"])
    for cut in (1, len(data) // 2, len(data) - 1):
        reader = Hessian2Reader(data[:cut])
        with pytest.raises(HessianError):
            for _ in range(hessian_js_samples()[name]["count"]):
                reader.skip()


def test_strings_read_back_as_hessian_js_wrote_them() -> None:
    reader = Hessian2Reader(bytes.fromhex(hessian_js_samples()["strings"]["hex"]))
    got = [reader.read_string() for _ in range(10)]
    assert got == ["", "a", "hello", "x" * 31, "y" * 32, "z" * 1023, "w" * 1024, "héllo wörld", "中文字符串",
                   "emoji \U0001F600 end"]
    chunked = Hessian2Reader(bytes.fromhex(hessian_js_samples()["chunked non-ascii string"]["hex"]))
    assert chunked.read_string() == "é" * 40000


def test_scalars_read_for_attachments() -> None:
    data = bytes.fromhex(hessian_js_samples()["ints"]["hex"] + hessian_js_samples()["longs"]["hex"])
    reader = Hessian2Reader(data)
    assert [reader.read_scalar() for _ in range(14)] == [
        0, 1, -16, 47, 48, -17, 2047, -2048, 2048, 262143, -262144, 262144, 2147483647, -2147483648]
    assert [reader.read_scalar() for _ in range(15)] == [
        0, -8, 15, 16, -2048, 2047, 2048, -262144, 262143, 262144, 2147483647, -2147483648, 2147483648,
        2**63 - 1, -(2**63)]
    doubles = Hessian2Reader(bytes.fromhex(hessian_js_samples()["doubles"]["hex"]))
    assert [doubles.read_scalar() for _ in range(11)] == pytest.approx(
        [0.0, 1.0, 2.0, -128.0, 127.0, 32767.0, -32768.0, 12.25, 0.001, 3.141592653589793, 1e300])
    dates = Hessian2Reader(bytes.fromhex(hessian_js_samples()["dates"]["hex"]))
    assert [dates.read_scalar() for _ in range(3)] == [0, 1700000000000, 1700000000123]
    complex_ = Hessian2Reader(bytes.fromhex(hessian_js_samples()["object"]["hex"]))
    assert complex_.read_scalar() is COMPLEX and complex_.pos == len(complex_.buf)


def _ssl_bytes(value: object) -> bytes:
    return bytes(b & 0xFF for b in SslEncoder({})._encode_single_value(value))


@pytest.mark.parametrize("value", [
    None, True, False, 0, -16, 47, 2047, -262144, 2**31 - 1, 2**40, -(2**40), 0.0, 1.0, 100.0, 1000.5, 0.001,
    3.14159, "", "x" * 31, "y" * 1023, "z" * 5000, "héllo", ["a", "b"], [1, 2, 3, 4, 5, 6, 7, 8], [1.5, 2.5],
    SslObject("com.example.User", {"id": 1, "name": "ann", "tags": ["x", "y"]}),
])
def test_skipper_ends_where_dubbo_ssl_python_values_end(value: object) -> None:
    data = _ssl_bytes(value)
    assert Hessian2Reader(data).skip() == len(data)


def test_our_strings_decode_with_independent_decoders() -> None:
    texts = ["", "a", "x" * 31, "y" * 32, "z" * 1024, "héllo", "中文", "e\U0001F600e", "q" * 70000, "é" * 40000]
    out = bytearray()
    for text in texts:
        write_string(out, text)
    decoded = json.loads(run_node("hessian_decode.js", json.dumps({"hex": out.hex(), "count": len(texts)})))
    assert decoded == texts
    # dubbo-ssl-python reads single-chunk BMP strings
    short = bytearray()
    write_string(short, "héllo 中文")
    assert SslDecoder(bytes(short)).read_next() == "héllo 中文"


def test_our_ints_decode_with_dubbo_ssl_python() -> None:
    for value in (-16, 47, 48, -17, 2047, -2048, 2048, 262143, -262144, 262144, 2**31 - 1, -(2**31)):
        out = bytearray()
        write_int(out, value)
        assert SslDecoder(bytes(out)).read_int() == value
        assert Hessian2Reader(bytes(out)).read_int() == value


@pytest.mark.parametrize("data, why", [
    (b"\x40", "reserved tag"),
    (b"\x45", "reserved tag"),
    (b"\x60\x91", "object before any class definition"),
    (b"\x7a" * 300 + b"\x4e", "nesting too deep"),
    (b"\x03\xff\xfe\xfd", "invalid UTF-8"),
    (b"\x58\xd7\xff\xff", "list with negative length"),
    (b"\x41\x00\x01\x61\x4e", "binary chunk followed by a non-binary"),
])
def test_bad_values_raise_hessian_error(data: bytes, why: str) -> None:
    with pytest.raises(HessianError):
        Hessian2Reader(data).skip()
