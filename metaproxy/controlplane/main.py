"""``metaproxy control-plane``: command-line entry of the control plane.

Runs with plain threads (the control plane does not need gevent); if the
process was monkey-patched anyway, grpcio's gevent support is switched on so
the server does not hang.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading

from metaproxy.settings import parse_duration


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="metaproxy control-plane",
                                description="Serve MetaRouter routes to metaproxies over xDS (RDS/ADS).")
    p.add_argument("--config-dir", "-d", action="append", default=[], metavar="DIR",
                   help="folder of MetaRouter/ApplicationProtocol YAML files (searched recursively)")
    p.add_argument("--file", "-f", action="append", default=[], metavar="FILE", help="one YAML file")
    p.add_argument("--listen", default="127.0.0.1:15010", help="gRPC address (default %(default)s)")
    p.add_argument("--admin", default="127.0.0.1:15011",
                   help="HTTP address for /healthz, /acks, /config; 'off' disables (default %(default)s)")
    p.add_argument("--debounce", default="10ms",
                   help="quiet time after a file change before reloading (default %(default)s)")
    p.add_argument("--watcher", choices=("auto", "inotify", "poll"), default="auto",
                   help="how file changes are seen: inotify (Linux), polling, or auto: inotify where it works "
                        "(default %(default)s)")
    p.add_argument("--poll", default="20ms",
                   help="with the poll watcher, how often the files are checked (default %(default)s)")
    p.add_argument("--removal-grace", default="100ms",
                   help="with inotify, how long a removed file may take to reappear (an editor's save) before "
                        "its routes are withdrawn (default %(default)s)")
    p.add_argument("--no-watch", action="store_true", help="load once; do not watch the files")
    p.add_argument("--no-validate", action="store_true",
                   help="serve translations even if a metaproxy would reject them (to exercise NACKs)")
    p.add_argument("--check", action="store_true",
                   help="validate and print the route configurations as JSON, then exit (1 on problems)")
    p.add_argument("--log-level", default="info")
    return p


def _gevent_patched() -> bool:
    try:
        from gevent import monkey
    except ImportError:
        return False
    return monkey.is_module_patched("threading")


def main(argv: list[str]) -> int:
    """Run the control plane until SIGINT/SIGTERM; returns the exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    paths = args.config_dir + args.file
    if not paths:
        print("metaproxy control-plane: give --config-dir DIR or --file FILE", file=sys.stderr)
        return 2
    if _gevent_patched():
        import grpc.experimental.gevent

        grpc.experimental.gevent.init_gevent()
    from metaproxy.controlplane.app import ControlPlane
    from metaproxy.controlplane.loader import Loader
    from metaproxy.xds.convert import route_config_to_dict

    if args.check:
        build = Loader(paths, validate=not args.no_validate).load()
        for problem in build.problems:
            print(problem, file=sys.stderr)
        print(json.dumps({n: route_config_to_dict(c) for n, c in build.resources.items()}, indent=2))
        return 1 if build.problems else 0
    try:
        debounce, poll = parse_duration(args.debounce), parse_duration(args.poll)
        grace = parse_duration(args.removal_grace)
    except ValueError as exc:
        print(f"metaproxy control-plane: {exc}", file=sys.stderr)
        return 2
    try:
        cp = ControlPlane(paths, listen=args.listen, admin=None if args.admin == "off" else args.admin,
                          watch=not args.no_watch, debounce=debounce, poll=poll, validate=not args.no_validate,
                          watcher=args.watcher, removal_grace=grace)
        cp.start()
    except OSError as exc:
        print(f"metaproxy control-plane: {exc}", file=sys.stderr)
        return 1
    done = threading.Event()

    def _stop(signum: int, frame: object) -> None:
        done.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    while not done.wait(1.0):
        pass
    cp.stop()
    return 0
