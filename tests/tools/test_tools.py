"""The protocol authors' kit: `metaproxy decode` and `metaproxy new-codec`, run as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys

from metaproxy.message import MessageType, Metadata
from metaproxy_codecs.tinyrpc.sample import encode_message


def metaproxy(*args: str, stdin: bytes | None = None, cwd=None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "metaproxy.cli", *args], input=stdin, capture_output=True,
                          timeout=120, cwd=cwd, env=env)


def _capture() -> bytes:
    one = encode_message(Metadata(request_id=1, message_type=MessageType.REQUEST, service="demo", method="a",
                                  **{"x-user": "u1"}))
    two = encode_message(Metadata(request_id=2, message_type=MessageType.ONEWAY, service="demo", method="b"))
    return one + two


def test_decode_prints_each_message_with_offsets_and_metadata(tmp_path):
    data = _capture()
    path = tmp_path / "capture.bin"
    path.write_bytes(data)
    result = metaproxy("decode", "--codec", "tinyrpc", str(path))
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr
    first = len(encode_message(Metadata(request_id=1, message_type=MessageType.REQUEST, service="demo",
                                        method="a", **{"x-user": "u1"})))
    assert f"message 0: bytes 0-{first} ({first} bytes)" in out
    assert f"message 1: bytes {first}-{len(data)}" in out
    assert "x-user" in out and "u1" in out and "oneway" in out
    assert f"2 message(s), {len(data)} bytes, no error" in out


def test_decode_json_hex_input_and_first_error_with_offset():
    data = _capture() + b"\x00\x00\x00\x14\x09garbage-garbage-gar"
    result = metaproxy("decode", "--codec", "tinyrpc", "--hex", "--json", "-", stdin=data.hex(" ").encode())
    lines = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert result.returncode == 1
    assert [m["metadata"]["method"] for m in lines[:2]] == ["a", "b"]
    assert lines[1]["end"] == len(_capture())
    assert lines[2]["error"].startswith(f"error at byte {len(_capture()) + 4}")
    assert "unsupported version 9" in lines[2]["error"]


def test_decode_response_direction_and_redis():
    replies = b"+OK\r\n$3\r\nabc\r\n-ERR no\r\n"
    result = metaproxy("decode", "--codec", "redis", "--direction", "response", "-", stdin=replies)
    out = result.stdout.decode()
    assert result.returncode == 0
    assert out.count("response_status") == 3 and "error" in out


def test_decode_unknown_codec_is_a_clear_error():
    result = metaproxy("decode", "--codec", "nope", "-", stdin=b"")
    assert result.returncode == 2
    assert b"no metaproxy.codecs entry point named 'nope'" in result.stderr


def test_new_codec_generates_a_package_that_installs_and_says_what_to_fill_in(tmp_path):
    result = metaproxy("new-codec", "acme_rpc", "--dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    root = tmp_path / "metaproxy-codec-acme_rpc"
    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                              "--target", str(site), str(root)], capture_output=True, timeout=180)
    assert install.returncode == 0, install.stderr.decode()
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    found = subprocess.run([sys.executable, "-c", "from metaproxy.codec import load_codec_class as l; "
                            "print(l('acme_rpc').__name__)"], capture_output=True, timeout=60, env=env)
    assert found.stdout.decode().strip() == "AcmeRpcCodec", found.stderr.decode()
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(root / "tests"),
                            "--rootdir", str(root)], capture_output=True, timeout=120, env=env, cwd=root)
    report = tests.stdout.decode()
    assert tests.returncode == 1, report
    assert "fill in `requests`" in report
    validate = metaproxy("validate", "-c", str(root / "conf" / "acme_rpc.yaml"), env=env)
    assert validate.returncode == 0, validate.stderr.decode()


def test_new_codec_refuses_a_bad_name(tmp_path):
    result = metaproxy("new-codec", "Bad-Name", "--dir", str(tmp_path))
    assert result.returncode == 1
    assert b"use lowercase letters" in result.stderr
