"""yamlfast and splice: the fast YAML load equals PyYAML's, and a spliced re-parse equals a full one."""

from __future__ import annotations

import random

import pytest
import yaml

from metaproxy.controlplane.splice import common_prefix, common_suffix, parse, splice
from metaproxy.controlplane.yamlfast import load_all
from tests.xds.helpers import meta_router

SAMPLES = [
    "a: 1\nspec:\n  routes:\n  - name: r0\n    x: [1, 2]\n  # comment\n  - name: r1\n    y: {k: v}\n  - q\nother: 2\n",
    "- a\n- b\n",
    "x: &a 1\ny: *a\n",
    "<<: {a: 1}\nb: 2\n",
    "---\na: yes\nb: ~\nc: 1.5\nd: 2020-01-01\ne: '1'\nf: !!str 2\ng: 0x1f\n---\n- 1\n- [2, 3]\n",
    "",
    "---\n",
    "a: |\n  line1\n  line2\nb: >-\n  x\n  y\n",
    "a: !!set {x, y}\n",
    "plain\n",
    "%TAG !e! tag:example.com,2000:\n---\n- a\n- b\n",
]


def _layout(parsed):
    return [(s.path, s.column, s.starts, s.node_starts, s.end) for s in parsed.layout.seqs]


@pytest.mark.parametrize("text", SAMPLES + [yaml.safe_dump(meta_router(extra_routes=[
    {"name": f"r{i}", "match": {"attributes": {"method": {"exact": f"m{i}"}}},
     "route": [{"destination": {"host": "demo", "subset": "v1"}}]} for i in range(20)]), sort_keys=False)])
def test_fast_load_equals_pyyaml(text):
    assert load_all(text) == list(yaml.load_all(text, Loader=yaml.SafeLoader))


def test_fast_load_raises_what_pyyaml_raises():
    for bad in ("? [a]\n: 1\n", "a: [1\n", "a: b: c\n"):
        with pytest.raises(yaml.YAMLError):
            list(yaml.load_all(bad, Loader=yaml.SafeLoader))
        with pytest.raises(yaml.YAMLError):
            load_all(bad)


def test_common_prefix_and_suffix_across_blocks():
    a = "x" * 10_000 + "A" + "y" * 9_000
    b = "x" * 10_000 + "BB" + "y" * 9_000
    assert common_prefix(a, b) == 10_000
    assert common_suffix(a, b, min(len(a), len(b)) - 10_000) == 9_000
    assert common_prefix("abc", "abc") == 3
    assert common_suffix("abc", "xbc", 3) == 2


def _base() -> str:
    routes = [{"name": f"r{i}", "match": {"attributes": {"method": {"exact": f"m{i}"}}},
               "route": [{"destination": {"host": "demo", "subset": "v1"}}]} for i in range(20)]
    return (yaml.safe_dump(meta_router(extra_routes=routes), sort_keys=False) + "---\n"
            + yaml.safe_dump({"a": [1, 2, {"b": [3, 4]}], "c": "d"}))


SNIPPETS = ["  - name: x\n", "    ", "\n", "-", " ", "#", "  # c\n", "x", ": ", "'", '"', "|\n", "&a ", "*a",
            "[", "]", "{", "}", "- ", "---\n", "1", "\t", "      extra: 1\n", "    timeout: 2s\n", "%TAG ! x\n"]


def test_random_edits_splice_exactly_like_a_full_parse():
    """Thousands of random one-place edits: whenever splice answers, it equals the full parse, layout included."""
    rnd = random.Random(7)
    base = _base()
    old = parse(base)
    spliced = 0
    for _ in range(1500):
        pos = rnd.randrange(len(base))
        op = rnd.random()
        if op < 0.4:
            new = base[:pos] + rnd.choice(SNIPPETS) + base[pos:]
        elif op < 0.7:
            new = base[:pos] + base[pos + rnd.randrange(1, 40):]
        else:
            new = base[:pos] + base[pos:].replace("v1", "v2", 1).replace("m1", "mm1", 1)
        result = splice(old, new)
        if result is None:
            continue
        full = parse(new)  # splice answered, so the new text must parse
        assert result.docs == full.docs, (base, new)
        assert _layout(result) == _layout(full)
        spliced += 1
    assert spliced > 300  # most edits inside a route are spliced, not re-parsed


def test_chained_splices_stay_exact():
    rnd = random.Random(3)
    text = _base()
    current = parse(text)
    for step in range(200):
        lines = current.text.split("\n")
        candidates = [i for i, line in enumerate(lines) if "exact:" in line or "subset:" in line]
        i = rnd.choice(candidates)
        lines[i] = lines[i] + str(step % 10)
        new = "\n".join(lines)
        result = splice(current, new)
        assert result is not None
        assert result.docs == parse(new).docs
        assert _layout(result) == _layout(parse(new))
        current = result


def test_unchanged_items_keep_their_identity():
    text = _base()
    old = parse(text)
    new_text = text.replace("exact: m7\n", "exact: m7b\n")
    new = splice(old, new_text)
    assert new is not None
    old_routes, new_routes = old.docs[0]["spec"]["routes"], new.docs[0]["spec"]["routes"]
    assert new_routes[7]["match"]["attributes"]["method"]["exact"] == "m7b"
    assert all(a is b for i, (a, b) in enumerate(zip(old_routes, new_routes, strict=True)) if i != 7)
    assert old_routes[7]["match"]["attributes"]["method"]["exact"] == "m7"  # the old data is not mutated


@pytest.mark.parametrize("edit", [
    lambda t: t.replace("port: 9191", "port: 9192"),                       # outside any item
    lambda t: t.replace("  - name: r3\n", "  - name: r3\n  - name: r3b\n"),  # a new item
    lambda t: t.replace("exact: m4\n", "exact: &x m4\n"),                   # an anchor
    lambda t: t.replace("    route:\n    - destination:\n        host: demo\n        subset: v1\n  - name: r6",
                        "    route:\n    - destination:\n        host: demo\n        subset: v1\n  other: 1\n"
                        "  - name: r6", 1),                                  # a line at the item's column
])
def test_edits_it_cannot_prove_fall_back_to_a_full_parse(edit):
    text = _base()
    new = edit(text)
    assert new != text
    assert splice(parse(text), new) is None


def test_texts_with_anchors_are_never_spliced():
    text = "base: &b {x: 1}\nitems:\n- a\n- b\n"
    old = parse(text)
    assert not old.layout.spliceable
    assert splice(old, text.replace("- b", "- c")) is None
