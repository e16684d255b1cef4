"""Run ``metaproxy.cli`` under cProfile: ``cprofile_proxy.py OUT run -c FILE``.

The stats are written to OUT when the proxy exits (after SIGTERM drains it),
whether it returns, raises SystemExit, or is stopped by an exception. This is
the fallback profiler of ``bench/run.py --profile`` when py-spy is missing.
"""

from __future__ import annotations

import atexit
import cProfile
import runpy
import sys


def main() -> None:
    out = sys.argv[1]
    sys.argv = ["metaproxy", *sys.argv[2:]]
    profiler = cProfile.Profile()
    dumped = False

    def dump() -> None:
        nonlocal dumped
        if not dumped:
            dumped = True
            profiler.disable()
            profiler.dump_stats(out)

    atexit.register(dump)
    profiler.enable()
    try:
        runpy.run_module("metaproxy.cli", run_name="__main__", alter_sys=True)
    finally:
        dump()


if __name__ == "__main__":
    main()
