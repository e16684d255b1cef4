"""Re-parse only the sequence item an edit touched, not the whole YAML text.

A MetaRouter of 10,000 routes is one file; changing one route re-parsed all
of it (most of the control plane's reload time). Given the text loaded last
time, its data and its :class:`~metaproxy.controlplane.yamlfast.Layout`, and
the new text, :func:`splice` finds the one span the two texts differ in. If
that span lies inside one item of an outermost block sequence (a route of
``spec.routes``), only that item's lines are parsed, as a one-item sequence
at the same column, and put in place of the old item; every other item keeps
its very object (so later stages can tell by identity what did not change).

It returns None, and the caller parses the whole text, whenever it cannot be
sure the result equals a full parse: the change spans items or touches
structure outside them, the new lines parse as anything but exactly one item
at that column, a line of them is indented at or left of the ``-`` (it would
belong to the parent in the full text), or the text uses anchors, aliases or
``%TAG`` directives. tests/xds/test_splice.py checks splice == full parse on
random edits.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, replace
from typing import Any

from metaproxy.controlplane.yamlfast import Layout, SeqSpan, load_with_layout

_BLOCK = 4096


@dataclass(frozen=True)
class Parsed:
    """One file's text, its documents and their layout."""

    text: str
    docs: list[Any]
    layout: Layout


def parse(text: str) -> Parsed:
    """The whole text (raises yaml.YAMLError)."""
    docs, layout = load_with_layout(text)
    return Parsed(text, docs, layout)


def common_prefix(a: str, b: str) -> int:
    """Length of the longest common prefix (block compares in C, then a bisection in the differing block)."""
    limit = min(len(a), len(b))
    k = 0
    while k < limit and a[k:k + _BLOCK] == b[k:k + _BLOCK]:
        k += _BLOCK
    if k >= limit:
        return limit
    lo, hi = k, min(k + _BLOCK, limit)  # a[:lo] == b[:lo]; they differ before hi
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def common_suffix(a: str, b: str, limit: int) -> int:
    """Length of the longest common suffix, at most ``limit``."""
    la, lb = len(a), len(b)
    k = 0
    while k < limit:
        step = min(_BLOCK, limit - k)
        if a[la - k - step:la - k] != b[lb - k - step:lb - k]:
            break
        k += step
    else:
        return limit
    lo, hi = k, min(k + _BLOCK, limit)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[la - mid:la - lo] == b[lb - mid:lb - lo]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _lines_belong_to_item(chunk: str, column: int) -> bool:
    """Every line after the first is blank, a comment, or indented right of the item's ``-``."""
    for line in chunk.split("\n")[1:]:
        stripped = line.lstrip(" ")
        if stripped and not stripped.startswith("#") and len(line) - len(stripped) <= column:
            return False
    return True


def _replace_item(docs: list[Any], path: tuple[Any, ...], index: int, value: Any) -> list[Any]:
    """New documents with item ``index`` of the list at ``path`` replaced; containers on the path are copied."""
    out = list(docs)
    parent: Any = out
    step: Any = path[0]
    for nxt in path[1:]:
        child = parent[step]
        child = dict(child) if isinstance(child, dict) else list(child)
        parent[step] = child
        parent, step = child, nxt
    seq = list(parent[step])
    seq[index] = value
    parent[step] = seq
    return out


def _shifted(seq: SeqSpan, delta: int) -> SeqSpan:
    return replace(seq, starts=[x + delta for x in seq.starts], node_starts=[x + delta for x in seq.node_starts],
                   end=None if seq.end is None else seq.end + delta)


def splice(old: Parsed, text: str) -> Parsed | None:
    """``text`` parsed by re-reading only the changed item of ``old``; None if that is not certainly right."""
    if text == old.text:
        return old
    if not old.layout.spliceable or not old.layout.seqs:
        return None
    o = old.text
    start = common_prefix(o, text)
    end_old = len(o) - common_suffix(o, text, min(len(o), len(text)) - start)
    delta = len(text) - len(o)
    for n, seq in enumerate(old.layout.seqs):
        i = bisect_right(seq.node_starts, start) - 1
        if i < 0:
            continue
        item_end = seq.starts[i + 1] if i + 1 < len(seq.starts) else seq.end
        if item_end is None or end_old > item_end:
            continue
        return _splice_item(old, text, n, i, item_end, delta)
    return None


def _splice_item(old: Parsed, text: str, n: int, i: int, item_end: int, delta: int) -> Parsed | None:
    seq = old.layout.seqs[n]
    chunk = text[seq.starts[i]:item_end + delta]
    if not _lines_belong_to_item(chunk, seq.column):
        return None
    try:
        docs, layout = load_with_layout(chunk)
    except Exception:  # a broken item: the full parse reports it with the file's line numbers
        return None
    if (not layout.spliceable or len(docs) != 1 or not isinstance(docs[0], list) or len(docs[0]) != 1
            or len(layout.seqs) != 1):
        return None
    inner = layout.seqs[0]
    if inner.path != (0,) or inner.column != seq.column or inner.end != len(chunk):
        return None
    new_docs = _replace_item(old.docs, seq.path, i, docs[0][0])
    seqs = []
    for m, other in enumerate(old.layout.seqs):
        if m == n:
            starts = seq.starts[:i + 1] + [x + delta for x in seq.starts[i + 1:]]
            node_starts = (seq.node_starts[:i] + [seq.starts[i] + inner.node_starts[0]]
                           + [x + delta for x in seq.node_starts[i + 1:]])
            end = None if seq.end is None else seq.end + delta
            seqs.append(SeqSpan(seq.path, seq.column, starts, node_starts, end))
        elif other.starts[0] > seq.starts[i]:
            seqs.append(_shifted(other, delta))
        else:
            seqs.append(other)
    return Parsed(text, new_docs, Layout(True, seqs))
