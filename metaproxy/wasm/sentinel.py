"""The per-request sentinel that finishes a stream whose request ended without a response.

Its own module, left out of the compiled hot path (metaproxy/tools/compile_hotpath.py
compiles vm.py and filter.py, which use it): it subclasses ``tuple`` (so making one runs
no Python ``__init__``) and has a ``__del__``, neither of which a mypyc native class can do.
"""

from __future__ import annotations

from typing import Any


class StreamSentinel(tuple[Any, Any]):
    """``(stream, vm)``, kept in ``ctx.scratch`` for as long as the request: queues its stream to be finished
    when dropped.

    ``__del__`` only appends to a list (no guest call may happen at an arbitrary
    point, such as inside another guest call); the VM drains the list on its next entry.
    A tuple, so making one per request runs no Python ``__init__``: ``StreamSentinel((stream, vm))``.
    """

    __slots__ = ()

    def __del__(self) -> None:
        stream, vm = self  # (Stream, WasmVm)
        if not stream.finished and stream.generation == vm.generation:
            vm.finished_elsewhere.append(stream)
