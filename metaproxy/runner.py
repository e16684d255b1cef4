"""Reusable greenlets for the per-request jobs of the data path.

Why not ``gevent.spawn`` per request: on Python 3.11 every new greenlet gets
its own frame data stack, a 16 KiB chunk the interpreter maps with ``mmap``
and unmaps with ``munmap`` when the greenlet dies. On the development VM
that pair of system calls plus the page faults of the fresh mapping cost
~15-20 µs per request, more than the whole filter chain. A greenlet that
finishes a job and parks for the next keeps its stack; handing it a job costs
what ``gevent.spawn`` costs to schedule a start (one loop callback).

Jobs run with the hub as parent, like any spawned greenlet, and must not let
exceptions escape (one that does is logged, and the greenlet goes on to the
next job).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from gevent import get_hub
from greenlet import GreenletExit, getcurrent, greenlet

log = logging.getLogger("metaproxy.runner")


class GreenletRunner:
    """Run short jobs each on a greenlet of its own, reusing parked greenlets (last parked, first reused).

    ``max_idle`` bounds how many parked greenlets (and their stacks) are kept
    after a burst; a greenlet finishing a job when that many are parked exits.
    """

    def __init__(self, max_idle: int = 1024) -> None:
        self.max_idle = max_idle
        self._idle: list[greenlet] = []
        self.started = 0  # greenlets created, for tests and curiosity

    def spawn(self, fn: Callable[..., Any], *args: Any) -> None:
        """Start ``fn(*args)`` on its own greenlet at the next loop iteration, as ``gevent.spawn`` would."""
        hub = get_hub()
        if self._idle and self._idle[-1].parent is hub:  # (a greenlet parked under another thread's hub is left)
            worker = self._idle.pop()
        else:
            worker = greenlet(self._work, parent=hub)
            self.started += 1
        hub.loop.run_callback(worker.switch, fn, args)

    def _work(self, fn: Callable[..., Any], args: tuple) -> None:
        hub = get_hub()
        idle = self._idle
        while True:
            try:
                fn(*args)
            except GreenletExit:  # killed mid-job: this greenlet's life ends with the job
                return
            except BaseException:  # noqa: BLE001 - a job's failure must not reach the hub
                log.exception("job %r failed", fn)
            fn = args = None  # drop references while parked
            if len(idle) >= self.max_idle:
                return
            idle.append(getcurrent())
            while True:
                try:
                    fn, args = hub.switch()
                    break
                except GreenletExit:  # killed while parked (or collected at exit): leave for good
                    me = getcurrent()
                    if me in idle:
                        idle.remove(me)
                    return
                except BaseException:  # noqa: BLE001
                    # A stray wake-up while parked (say a timer a finished job left armed): we are
                    # still on the idle list, so keep waiting for a real job.
                    log.debug("parked greenlet woken without a job", exc_info=True)


#: The process's runner (one hub per process: the proxy runs on one thread).
RUNNER = GreenletRunner()
