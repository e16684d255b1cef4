"""The waiting request of a multiplexed upstream connection, kept out of the compiled hot path.

Its own module because it subclasses gevent's ``Waiter``: gevent has no type
information, and a class deriving from an untyped base inside a module that
mypyc compiles loses that base (metaproxy/tools/compile_hotpath.py compiles
``upstream/pool.py``, which uses this).
"""

from __future__ import annotations

from gevent.hub import Waiter


class Call(Waiter):
    """A greenlet waiting for its response: a hub Waiter the response, an error or the timer resolves.

    Cheaper than AsyncResult + gevent.Timeout (no link lists, no Timeout
    object per request), and a Waiter itself rather than an object holding
    one (no Python-level constructor).

    Everything :meth:`MultiplexConnection.start` keeps in ``pending`` has this
    shape (``done``, ``timer``, ``conn``, ``upstream_id`` and ``switch(value)``):
    the router's requests served in the hub's callbacks put a continuation
    there instead of a waiting greenlet.
    """

    done = False
    timer = None
    conn = None
    upstream_id = 0
