"""``metaproxy new-codec NAME``: a codec package that installs with pip and runs the conformance kit.

The generated tests fail, with a message that says what to fill in, until the
author adds sample messages and implements decode/encode/on_error: the
skeleton is a to-do list that checks itself.
"""

from __future__ import annotations

import argparse
import keyword
import re
import sys
from pathlib import Path

SETUP = '''\
from setuptools import setup

setup(
    name="metaproxy-codec-{name}",
    version="0.1.0",
    description="{title} codec for metaproxy",
    packages=["{package}"],
    install_requires=["metaproxy"],
    entry_points={{"metaproxy.codecs": ["{name} = {package}:{cls}"]}},
)
'''

INIT = '''\
"""{title} codec for metaproxy."""

from {package}.codec import {cls}

__all__ = ["{cls}"]
'''

CODEC = '''\
"""{title}: a metaproxy codec. Read docs/writing-a-codec.md (and codecs/tinyrpc/codec.py) first.

A codec is sans-IO: decode() reads bytes from the front of a bytearray, encode()
and on_error() append bytes. It never touches a socket.
"""

from __future__ import annotations

from typing import Mapping

from metaproxy.codec import DONE, WAIT_FOR_DATA, Codec, CodecError, DecodeStatus, take  # noqa: F401
from metaproxy.message import ErrorType, MessageType, Metadata, ProxyError  # noqa: F401


class {cls}(Codec):
    name = "{name}"
    # True if responses carry the request id (many requests can share a connection).
    multiplexing = True

    def decode(self, buffer: bytearray, metadata: Metadata) -> DecodeStatus:
        # 1. Not a whole message yet? return WAIT_FOR_DATA without touching buffer.
        # 2. Check the declared size early: self.check_size(size).
        # 3. Fill metadata["request_id"], ["message_type"], ["service"], ["method"], your own keys.
        # 4. metadata.frame = take(buffer, size); return DONE
        # Bytes that cannot be a message: raise CodecError("why", offset).
        raise NotImplementedError("{cls}.decode: see docs/writing-a-codec.md, 'The contract'")

    def encode(self, metadata: Metadata, mutation: Mapping[str, str], buffer: bytearray) -> None:
        # Append metadata.frame with metadata["request_id"] written into it and the mutation applied.
        raise NotImplementedError("{cls}.encode: forward metadata.frame, patching request id and mutation")

    def on_error(self, metadata: Metadata, error: ProxyError, buffer: bytearray) -> None:
        # Append your protocol's error reply to this request (same request id), for error.kind.
        raise NotImplementedError("{cls}.on_error: write the protocol's own error reply")
'''

TEST = '''\
"""The conformance kit over {title} sample messages: fill in the samples below."""

from metaproxy.testing.conformance import CodecConformance
from {package} import {cls}


class Test{cls}Conformance(CodecConformance):
    codec_class = {cls}
    options = {{}}
    # Complete messages captured from a real client and server of the protocol, e.g.
    #   bytes.fromhex("...")   (metaproxy decode --codec {name} --hex FILE shows what your codec reads)
    requests: list[bytes] = []   # fill in the sample messages: at least one request
    responses: list[bytes] = []  # fill in the sample messages: at least one response
'''

CONFIG = '''\
# A proxy config using the {name} codec: metaproxy validate -c conf/{name}.yaml
listeners:
  - name: {name}-in
    address: 127.0.0.1:9400
    protocol: {{codec: {name}}}
    route_config:
      name: {name}-routes
      routes:
        - name: all
          route: {{cluster: {name}-upstream}}
clusters:
  - name: {name}-upstream
    endpoints: [127.0.0.1:9401]
'''

README = '''\
# metaproxy-codec-{name}

A [metaproxy](https://pypi.org/project/metaproxy/) codec for {title}.

    pip install -e .            # registers the codec under the entry point metaproxy.codecs: {name}
    python -m pytest tests      # the conformance kit: fails until you fill in samples and the codec
    metaproxy decode --codec {name} --hex capture.hex   # see what your codec reads from captured bytes
'''


def generate(name: str, directory: Path) -> Path:
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name) or keyword.iskeyword(name):
        raise ValueError(f"codec name {name!r}: use lowercase letters, digits and _ (a Python identifier)")
    root = directory / f"metaproxy-codec-{name}"
    if root.exists():
        raise FileExistsError(f"{root} already exists")
    package = f"metaproxy_codec_{name}"
    cls = "".join(part.capitalize() for part in name.split("_")) + "Codec"
    fields = {"name": name, "package": package, "cls": cls, "title": name.replace("_", " ").title()}
    files = {
        "setup.py": SETUP,
        f"{package}/__init__.py": INIT,
        f"{package}/codec.py": CODEC,
        "tests/test_conformance.py": TEST,
        f"conf/{name}.yaml": CONFIG,
        "README.md": README,
    }
    for rel, template in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.format(**fields))
    return root


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="metaproxy new-codec", description=__doc__.splitlines()[0])
    parser.add_argument("name", help="protocol name used in config (lowercase identifier)")
    parser.add_argument("--dir", default=".", help="where to create metaproxy-codec-NAME/")
    args = parser.parse_args(argv)
    try:
        root = generate(args.name, Path(args.dir))
    except (ValueError, FileExistsError) as exc:
        print(f"metaproxy new-codec: {exc}", file=sys.stderr)
        return 1
    print(f"created {root}\nnext: cd {root} && pip install -e . && python -m pytest tests")
    return 0
