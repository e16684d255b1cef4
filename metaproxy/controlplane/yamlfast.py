"""Load YAML documents faster than ``yaml.safe_load_all`` for the plain data route files hold.

PyYAML's C parser builds the node tree quickly but its constructor is Python
and slow (most of the load time of a 1,000-route file). Plain mappings,
sequences and string scalars are converted here directly; any other scalar
goes through the safe constructor, and a document with merge keys or
custom tags is constructed the ordinary way. The result is the same data.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_STR = "tag:yaml.org,2002:str"
_SEQ = "tag:yaml.org,2002:seq"
_MAP = "tag:yaml.org,2002:map"
_MERGE = "tag:yaml.org,2002:merge"


class _Fallback(Exception):
    pass


def _convert(node: Node, loader: Any) -> Any:
    if isinstance(node, ScalarNode):
        if node.tag == _STR:
            return node.value
        return loader.construct_object(node, deep=True)
    if isinstance(node, SequenceNode):
        if node.tag != _SEQ:
            raise _Fallback
        return [_convert(item, loader) for item in node.value]
    if not isinstance(node, MappingNode) or node.tag != _MAP:
        raise _Fallback
    out = {}
    for key_node, value_node in node.value:
        if key_node.tag == _MERGE or not isinstance(key_node, ScalarNode):
            raise _Fallback
        out[_convert(key_node, loader)] = _convert(value_node, loader)
    return out


def load_all(text: str) -> list[Any]:
    """Every document of ``text`` (raises yaml.YAMLError like PyYAML)."""
    loader = _LOADER(text)
    try:
        docs = []
        while loader.check_node():
            node = loader.get_node()
            try:
                docs.append(_convert(node, loader))
            except _Fallback:
                docs.append(loader.construct_document(node))
        return docs
    finally:
        loader.dispose()
