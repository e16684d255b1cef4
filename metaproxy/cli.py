"""The ``metaproxy`` command: run, validate, control-plane, decode, new-codec.

gevent's monkey patching must happen before anything imports socket or
threading, so the subcommands that serve traffic patch first, then import.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any


def _patch() -> None:
    from gevent import monkey

    if not monkey.is_module_patched("socket"):
        monkey.patch_all()
    try:
        import grpc.experimental.gevent as grpc_gevent

        grpc_gevent.init_gevent()  # measured: without it grpcio under gevent hangs
    except ImportError:
        pass


def _logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def load_or_report(path: str) -> Any:
    """The config at ``path``, or None after printing every problem to stderr."""
    from metaproxy.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return None


def cmd_validate(args: argparse.Namespace) -> int:
    config = load_or_report(args.config)
    if config is None:
        return 1
    # Filters validate their own options when built: build them, then let go.
    from metaproxy.server import Listener
    from metaproxy.stats import StatsStore
    from metaproxy.upstream.cluster import ClusterManager

    problems = []
    if config.access_log:
        from metaproxy.accesslog import check_access_logs

        problems += [f"{config.source}: {p}" for p in check_access_logs(config.access_log)]
    if config.tracing:
        from metaproxy.tracing import read_tracing_config

        try:
            read_tracing_config(config.tracing)
        except ValueError as exc:
            problems.append(f"{config.source}: tracing: {exc}")
    clusters = ClusterManager(config.clusters, StatsStore())
    for lc in config.listeners:
        try:
            Listener(lc, clusters, StatsStore(), config.base_dir).chain.close()
        except (ValueError, OSError) as exc:
            problems.append(f"{config.source}: {exc}")
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    print(f"{args.config}: ok ({len(config.listeners)} listeners, {len(config.clusters)} clusters)")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    _patch()
    _logging(args.log_level)
    config = load_or_report(args.config)
    if config is None:
        return 1
    workers = config.workers
    if workers != 1 and not args.single:
        from metaproxy.workers import run_workers

        return run_workers(args.config, config)
    from metaproxy.proxy import Proxy

    try:
        proxy = Proxy(config)
        proxy.start()
    except (ValueError, OSError) as exc:
        print(f"{args.config}: {exc}", file=sys.stderr)
        return 1
    return proxy.serve_forever()


def cmd_control_plane(argv: list[str]) -> int:
    _patch()
    from metaproxy.controlplane import main

    return main(argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metaproxy", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the proxy")
    run.add_argument("-c", "--config", required=True, help="proxy YAML file")
    run.add_argument("--log-level", default="info")
    run.add_argument("--single", action="store_true", help="one process even if the config asks for workers")
    run.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)  # always on; kept for scripts
    run.set_defaults(func=cmd_run)
    val = sub.add_parser("validate", help="check a config file and exit 0, or print each problem and exit 1")
    val.add_argument("-c", "--config", required=True)
    val.set_defaults(func=cmd_validate)
    sub.add_parser("control-plane", help="serve MetaRouter routes over xDS (see --help there)", add_help=False)
    dec = sub.add_parser("decode", help="decode captured bytes with a codec and print each message", add_help=False)
    dec.set_defaults(func=None)
    new = sub.add_parser("new-codec", help="generate a codec package skeleton", add_help=False)
    new.set_defaults(func=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "control-plane":
        return cmd_control_plane(argv[1:])
    if argv and argv[0] == "decode":
        from metaproxy.tools.decode import main as decode_main

        return decode_main(argv[1:])
    if argv and argv[0] == "new-codec":
        from metaproxy.tools.new_codec import main as new_codec_main

        return new_codec_main(argv[1:])
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
