"""Every committed fuzz input (seeds, and any crash atheris ever found) still holds the fuzz property."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz.target import CODECS, decode_all, one_input, setup_of

CORPUS = Path(__file__).parent / "corpus"
FILES = sorted((codec, path) for codec in CODECS for path in (CORPUS / codec).glob("*") if path.is_file())


def test_every_codec_has_a_corpus() -> None:
    assert {codec for codec, _ in FILES} == set(CODECS)


@pytest.mark.parametrize("codec,path", FILES, ids=[f"{c}/{p.name}" for c, p in FILES])
def test_corpus_input(codec: str, path: Path) -> None:
    data = path.read_bytes()
    one_input(codec, data)
    if path.name.startswith("seed-"):  # seeds are valid messages: they must decode, not just not crash
        messages, error = decode_all(CODECS[codec], setup_of(codec, data[0]), [data[2:]])
        assert error is None and len(messages) == 2
