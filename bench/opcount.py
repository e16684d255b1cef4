"""Count the bytecodes each Python function executes in a running proxy: a profile noise cannot blur.

    python bench/opcount.py OUT run -c FILE        # a proxy, traced
    kill -USR1 PID   # start counting (after a warm-up)
    kill -USR2 PID   # stop and write OUT: "count function" lines, most first

Why: on a shared 2-core machine CPU time per request moves by 2x between
runs, while the number of bytecodes a request executes does not move at
all. At roughly 100 machine instructions per bytecode on CPython 3.11 (and
~800 for a Python-level call), bytecodes per request say where the time
goes and whether a change helped, before any timed run.

Tracing slows the proxy ~20x: send a few thousand requests, not a load.
Frames that started before the tracer (none, when the tracer starts first)
would be missed; the tracer is installed before the proxy starts.
"""

from __future__ import annotations

import collections
import runpy
import signal
import sys
import threading
from types import FrameType
from typing import Any

_counts: collections.Counter[str] = collections.Counter()
_calls: collections.Counter[str] = collections.Counter()
_on = False


def _name(frame: FrameType) -> str:
    code = frame.f_code
    return f"{code.co_filename.rsplit('/', 2)[-1] if '/' in code.co_filename else code.co_filename}:" \
           f"{code.co_qualname}"


def _local_trace(frame: FrameType, event: str, arg: Any) -> Any:
    if _on and event == "opcode":
        _counts[_name(frame)] += 1
    return _local_trace


def _global_trace(frame: FrameType, event: str, arg: Any) -> Any:
    if event == "call":
        frame.f_trace_opcodes = True
        if _on:
            _calls[_name(frame)] += 1
        return _local_trace
    return None


def main() -> None:
    out = sys.argv[1]
    sys.argv = ["metaproxy", *sys.argv[2:]]

    def start(*_: object) -> None:
        global _on
        _counts.clear()
        _calls.clear()
        _on = True

    def stop(*_: object) -> None:
        global _on
        _on = False
        total = sum(_counts.values())
        with open(out, "w") as fh:
            fh.write(f"# total bytecodes {total}, total Python calls {sum(_calls.values())}\n")
            for name, n in _counts.most_common():
                fh.write(f"{n:10d} {_calls.get(name, 0):8d} {name}\n")

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    sys.settrace(_global_trace)
    threading.settrace(_global_trace)
    runpy.run_module("metaproxy.cli", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
