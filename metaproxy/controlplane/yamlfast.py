"""Load YAML documents faster than ``yaml.safe_load_all`` for the plain data route files hold.

PyYAML's C parser is fast, but composing its node tree and running its
Python constructor is not (most of the load time of a 1,000-route file).
Here the parser's events are turned into dicts, lists and scalars directly:
plain scalars are resolved by PyYAML's own resolver (cached by value, since
route files repeat the same few words), and any scalar that is not a
string goes through the safe constructor. Anything unusual -- anchors,
aliases, merge keys, tags on collections, complex keys -- makes the whole
text be loaded the ordinary way instead. The result is the same data.

The load also returns a :class:`Layout`: where each item of every outermost
block sequence starts and ends in the text. splice.py uses it to re-parse
only the item an edit touched (one route of 10,000) instead of the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.events import (
    AliasEvent,
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)
from yaml.nodes import ScalarNode

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_STR = "tag:yaml.org,2002:str"
_SEQ = "tag:yaml.org,2002:seq"
_MAP = "tag:yaml.org,2002:map"
_MERGE = "tag:yaml.org,2002:merge"
_IMMUTABLE_TAGS = frozenset({"tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:bool",
                             "tag:yaml.org,2002:null"})
_ITEM_PREFIX = re.compile(r" *- +\Z")
_NOKEY: Any = object()


class _Fallback(Exception):
    """Something the direct conversion does not handle: load the ordinary way."""


@dataclass
class SeqSpan:
    """One outermost block sequence: where its items are in the text.

    ``path`` leads from the document (index first) to the list; ``starts[i]``
    is the offset of the line holding item i's ``-`` indicator,
    ``node_starts[i]`` the offset of the item itself, and ``end`` the offset
    of the line after the last item (``None``: the last item cannot be
    spliced, e.g. the text ends without a newline).
    """

    path: tuple[Any, ...]
    column: int
    starts: list[int] = field(default_factory=list)
    node_starts: list[int] = field(default_factory=list)
    end: int | None = None


@dataclass
class Layout:
    """What splice.py needs to know about a loaded text; ``spliceable`` False when it must not try."""

    spliceable: bool = True
    seqs: list[SeqSpan] = field(default_factory=list)


class _Resolver:
    """Plain scalar -> tag and value, memoised (a route file says ``name``, ``exact``, ``demo`` thousands of times)."""

    def __init__(self) -> None:
        self.tags: dict[str, str] = {}
        self._values: dict[tuple[str, str], Any] = {}

    def tag(self, loader: Any, value: str) -> str:
        tag = self.tags.get(value)
        if tag is None:
            tag = loader.resolve(ScalarNode, value, (True, False))
            if len(self.tags) < 100_000:
                self.tags[value] = tag
        return tag

    def construct(self, loader: Any, tag: str, value: str, style: str | None) -> Any:
        key = (tag, value)
        if tag in _IMMUTABLE_TAGS and key in self._values:
            return self._values[key]
        out = loader.construct_object(ScalarNode(tag, value, style=style), deep=True)
        if tag in _IMMUTABLE_TAGS and len(self._values) < 100_000:
            self._values[key] = out
        return out


_RESOLVER = _Resolver()


def _line_start(text: str, index: int) -> int:
    return text.rfind("\n", 0, index) + 1


def _events_to_data(loader: Any, text: str, layout: Layout) -> list[Any]:
    """Build every document from the parser's events; raises _Fallback or yaml.YAMLError."""
    docs: list[Any] = []
    resolver = _RESOLVER
    tags = resolver.tags
    stack: list[list[Any]] = []  # frames: [container, is_map, pending_key]
    cur: Any = None
    is_map = False
    key: Any = _NOKEY
    record: SeqSpan | None = None  # the outermost block sequence being recorded
    record_depth = -1
    get = loader.get_event
    while True:
        ev = get()
        cls = type(ev)
        if cls is ScalarEvent:
            if ev.anchor is not None:
                raise _Fallback
            tag = ev.tag
            if tag is None or tag == "!":
                tag = (tags.get(ev.value) or resolver.tag(loader, ev.value)) if ev.implicit[0] else _STR
            if tag == _STR:
                value = ev.value
            elif tag == _MERGE:
                raise _Fallback
            else:
                value = resolver.construct(loader, tag, ev.value, ev.style)
            if record is not None and not is_map and len(stack) == record_depth:
                record.node_starts.append(ev.start_mark.index)
        elif cls is MappingStartEvent or cls is SequenceStartEvent:
            if ev.anchor is not None or ev.tag not in (None, "!", _MAP, _SEQ):
                raise _Fallback
            if record is not None and not is_map and len(stack) == record_depth:
                record.node_starts.append(ev.start_mark.index)
            stack.append([cur, is_map, key])
            is_map = cls is MappingStartEvent
            cur, key = ({} if is_map else []), _NOKEY
            if record is None and not is_map and not ev.flow_style:
                record = SeqSpan(path=_path(stack, len(docs)), column=ev.start_mark.column)
                record_depth = len(stack)
            continue
        elif cls is MappingEndEvent or cls is SequenceEndEvent:
            value = cur
            if record is not None and not is_map and len(stack) == record_depth:
                _close_record(record, text, ev.start_mark.index, layout)
                record, record_depth = None, -1
            cur, is_map, key = stack.pop()
        elif cls is DocumentStartEvent:
            if ev.tags:  # %TAG directives: a spliced item would be read without them
                layout.spliceable = False
            continue
        elif cls is StreamEndEvent or ev is None:
            return docs
        elif cls is AliasEvent:
            raise _Fallback
        else:  # StreamStartEvent, DocumentEndEvent
            continue
        # a scalar or a finished collection: put it where it belongs
        if cur is None:  # the document's root node
            docs.append(value)
        elif is_map:
            if key is _NOKEY:
                if value is not None and not isinstance(value, (str, int, float, bool)):
                    raise _Fallback  # complex keys
                key = value
            else:
                cur[key] = value
                key = _NOKEY
        else:
            cur.append(value)


def _path(stack: list[list[Any]], doc: int) -> tuple[Any, ...]:
    """The key path from the document to the collection just opened (the top frame's parent chain)."""
    out: list[Any] = [doc]
    for i in range(1, len(stack)):  # stack[0] is the document level
        container, is_map, key = stack[i]
        out.append(key if is_map else len(container))
    return tuple(out)


def _close_record(record: SeqSpan, text: str, end_index: int, layout: Layout) -> None:
    """Check each item sits on its own ``- `` line at one column; keep the sequence only if so."""
    starts = []
    for node_start in record.node_starts:
        line = _line_start(text, node_start)
        prefix = text[line:node_start]
        if not _ITEM_PREFIX.match(prefix) or prefix.index("-") != record.column:
            return
        starts.append(line)
    if not starts:
        return
    record.starts = starts
    line = _line_start(text, end_index)
    if end_index == len(text) and not text.endswith("\n"):
        record.end = None
    elif text[line:end_index].strip(" ") == "" and line > starts[-1]:
        record.end = line
    else:
        record.end = None
    layout.seqs.append(record)


def load_with_layout(text: str) -> tuple[list[Any], Layout]:
    """Every document of ``text`` and where its sequence items are (raises yaml.YAMLError like PyYAML)."""
    layout = Layout()
    loader = _LOADER(text)
    try:
        return _events_to_data(loader, text, layout), layout
    except _Fallback:
        pass
    finally:
        loader.dispose()
    return list(yaml.load_all(text, Loader=_LOADER)), Layout(spliceable=False)


def load_all(text: str) -> list[Any]:
    """Every document of ``text`` (raises yaml.YAMLError like PyYAML)."""
    return load_with_layout(text)[0]
